"""Parameters and ring helpers shared by multiparty CKKS keys (:mod:`bcfl_engine.he.multiparty`):
per preset, the key-level primes, ``parms_id`` and TenSEAL context templates; the common
polynomial expanded from the CRS; the digest a decryption share is bound to; decoding.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import DecryptionRefused, InvalidArgument, PayloadError
from . import lean_wire, sampling, shamir, wire
from . import mpformat as fmt
from . import ntt as T
from . import presets as _presets
from .decode import decode
from .keys import ContextInfo, context_info, tenseal

# The smudging noise is a property of the preset (Preset.smudge_bits, .smudge_bound): uniform on
# [-bound, bound], standard deviation 2^smudge_bits. SMUDGE_BOUND is the "threshold" preset's:
# standard deviation 2^50, a margin of 2^41 over an aggregate's noise at scale 2^80
# (THRESHOLD_CKKS.md's table).
SMUDGE_BOUND = _presets.get("threshold").smudge_bound  # floor(sqrt(3) * 2^50)
KEY_ETA = 21  # centered binomial, standard deviation 3.24 (SEAL's error: 3.2)
KAT_VALUES = 64


@dataclass(frozen=True)
class Params:
    """What every party of one preset shares: primes, key ``parms_id``, context templates."""

    preset: _presets.Preset
    key_primes: tuple[int, ...]
    key_parms_id: tuple[int, int, int, int]
    template: bytes  # a public-only context of these parameters (its public key is replaced)
    info: ContextInfo


@functools.lru_cache(maxsize=4)
def params(preset: str = "threshold") -> Params:
    """The :class:`Params` of a registered preset (cached)."""
    p = _presets.get(preset)
    ts = tenseal()
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, p.poly_degree, coeff_mod_bit_sizes=list(p.coeff_bits))
    ctx.global_scale = p.scale
    kcd = ctx.seal_context().data.key_context_data()
    primes = tuple(int(m.value()) for m in kcd.parms().coeff_modulus())
    pid = tuple(int(x) for x in kcd.parms_id())
    # The template's own keys are dropped at once: no secret key stays in this process.
    ctx.make_context_public(generate_galois_keys=False, generate_relin_keys=False)
    template = ctx.serialize(
        save_public_key=True, save_secret_key=False, save_galois_keys=False, save_relin_keys=False
    )
    return Params(p, primes, pid, template, context_info(ctx))  # type: ignore[arg-type]


def new_crs() -> bytes:
    """32 fresh random bytes: the seed of the common polynomial (draw it jointly, e.g. on chain)."""
    return os.urandom(32)


def _check_crs(crs: Any) -> bytes:
    if not isinstance(crs, (bytes, bytearray)) or len(crs) != 32:
        raise InvalidArgument(f"the CRS must be 32 bytes; got {type(crs).__name__}")
    return bytes(crs)


@functools.lru_cache(maxsize=8)
def common_poly(crs: bytes, primes: tuple[int, ...], n: int) -> np.ndarray:
    """``a`` ``[K, N]`` in NTT form, uniform below each prime, expanded from ``crs``."""
    return np.stack(
        [
            sampling.uniform_mod(q, n, b"bcfl-mp-crs", crs, k.to_bytes(4, "little"))
            for k, q in enumerate(primes)
        ]
    )


def _check_party(party: Any) -> int:
    if isinstance(party, bool) or not isinstance(party, (int, np.integer)):
        raise InvalidArgument(f"a party id is an int in [1, {fmt.MAX_PARTY}]; got {party!r}")
    if not 1 <= int(party) <= fmt.MAX_PARTY:
        raise InvalidArgument(f"a party id is an int in [1, {fmt.MAX_PARTY}]; got {party}")
    return int(party)


def _ntt_signed(x: np.ndarray, primes: Sequence[int]) -> np.ndarray:
    """Small signed integers ``[..., N]`` -> NTT form ``[..., K, N]`` over ``primes``."""
    return np.stack([T.ntt(T.from_signed(x, q), q) for q in primes], axis=-2)


def c1_digest(c1: np.ndarray, parms_id: tuple[int, ...]) -> bytes:
    """What a decryption share is bound to: BLAKE3-256 (key derivation mode, context
    ``"bcfl-mp-c1 v1"``) over ``parms_id`` and the ciphertexts' ``c1`` residues (little-endian
    u64). BLAKE3: 4.5x BLAKE2b on 32 MB of residues, one core (the engine's payload hash too)."""
    from blake3 import blake3

    h = blake3(derive_key_context="bcfl-mp-c1 v1")
    h.update(np.asarray(parms_id, dtype="<u8").tobytes())
    h.update(np.ascontiguousarray(c1, dtype="<u8").view(np.uint8).reshape(-1).data)
    return h.digest()


def _residues(blob: Any, info: ContextInfo, where: str) -> tuple[wire.Layout, np.ndarray, Any]:
    """``(layout, residues [C, 2, K, N], SEAL version)`` of a payload; PayloadError names it."""
    try:
        layout = wire.peek(blob, info)
        res, version = wire.parse(blob, layout)
    except PayloadError as exc:
        raise PayloadError(f"{where}: {exc}") from None
    return layout, res, version


def contributions_c1(
    contributions: Sequence[Any] | Mapping[Any, Any],
    weights: Sequence[int] | None,
    layout: wire.Layout,
    info: ContextInfo,
) -> tuple[np.ndarray, int]:
    """``(sum_i w_i c1_i [C, K, N], distinct)``: the weighted sum of the contributions' ``c1``
    at ``layout``'s level and how many distinct ``c1`` have a non-zero weight. A contribution of
    another level or shape is a DecryptionRefused naming it; a bad weight an InvalidArgument."""
    items = list(
        contributions.items() if isinstance(contributions, Mapping) else enumerate(contributions)
    )
    if weights is not None:
        weights = list(weights)
        if len(weights) != len(items) or any(
            isinstance(w, bool) or not isinstance(w, (int, np.integer)) or w < 0 for w in weights
        ):
            raise InvalidArgument(
                f"weights must be {len(items)} non-negative ints (one per contribution)"
            )
    if items and bytes(memoryview(items[0][1])[:4]) == lean_wire.LEAN_MAGIC:
        return _lean_c1(items, weights, layout, info)
    total = np.zeros((layout.ciphertexts, layout.residues, layout.poly_degree), dtype=np.uint64)
    seen: set[bytes] = set()
    for i, (cid, blob) in enumerate(items):
        lay, r, _ = _residues(blob, info, f"contribution {cid}")
        if (lay.parms_id, lay.sizes, lay.pair) != (layout.parms_id, layout.sizes, layout.pair):
            raise DecryptionRefused(
                f"contribution {cid} has another level or shape than the aggregate"
            )
        w = 1 if weights is None else int(weights[i])
        if w == 0:
            continue
        seen.add(c1_digest(r[:, 1], lay.parms_id))
        for j, q in enumerate(layout.primes):
            term = r[:, 1, j] if w == 1 else shamir.scale(r[:, 1, j], w, q)
            total[:, j] = T.addmod(total[:, j], term, q)
    return total, len(seen)


def _lean_c1(
    items: list[tuple[Any, Any]],
    weights: Sequence[int] | None,
    layout: wire.Layout,
    info: ContextInfo,
) -> tuple[np.ndarray, int]:
    """:func:`contributions_c1` for lean contributions (:mod:`bcfl_engine.he.lean`): their
    ``c1`` (mod ``2^b``) summed mod ``2^b`` with the weights, lifted to ``q_0`` and put in NTT
    form, as :func:`~bcfl_engine.he.lean_aggregate.aggregate_lean` writes the aggregate's: the
    lift of a sum is not the sum of the lifts, so the guard is defined on the lean residues and
    recomputes the aggregate's ``c1`` from them exactly. A distinct contribution is a distinct
    ``c1`` mod ``2^b``."""
    import torch

    from . import lean

    first: lean_wire.LeanLayout | None = None
    acc: torch.Tensor | None = None
    seen: set[bytes] = set()
    for i, (cid, blob) in enumerate(items):
        try:
            lay = first or lean_wire.layout_of(blob)
            lean_wire.check_context(lay, info)
            values = lean_wire.parse(blob, lay)
        except PayloadError as exc:
            raise PayloadError(f"contribution {cid}: {exc}") from None
        low = lay.compact()
        if (low.parms_id, low.sizes, low.pair) != (layout.parms_id, layout.sizes, layout.pair):
            raise DecryptionRefused(
                f"contribution {cid} has another level or shape than the aggregate"
            )
        first = lay
        w = 1 if weights is None else int(weights[i])
        if w == 0:
            continue
        seen.add(c1_digest(values[:, 1], lay.parms_id))
        c1 = torch.from_numpy(np.ascontiguousarray(values[None, :, 1]).view(np.int64))
        acc = lean.lean_sum(c1, lay.b, [w], acc=acc)
    shape = (layout.ciphertexts, layout.residues, layout.poly_degree)
    if acc is None or first is None:
        return np.zeros(shape, dtype=np.uint64), 0
    lifted = lean.lift(acc.numpy(), first.q0, first.b)
    return T.ntt(np.ascontiguousarray(lifted), first.q0).reshape(shape), len(seen)


def _decode(m: np.ndarray, layout: wire.Layout, version: Any, prm: Params) -> np.ndarray:
    """Values of the plaintext polynomials ``m`` ``[C, K, N]`` (NTT form), decoded without any
    key (:mod:`bcfl_engine.he.decode`)."""
    return decode(m, layout.primes, layout.scale, layout.sizes, layout.d, layout.pair)
