"""Client side of CKKS secure aggregation: encrypt an update compactly, decrypt an aggregate.

:func:`encrypt` encodes each chunk of ``N / 2`` reals (``N`` when ``pair=True``) with TenSEAL's
bundled SEAL encoder directly at the *lowest* level of the modulus chain and encrypts it with
the public key there. SEAL then encrypts one level up and divides by the dropped prime (its
"modulus switching with divide-and-round" in ``Encryptor::encrypt_zero_internal``), so the fresh
noise stays small; a sum needs no multiplicative depth, so nothing is lost. The result is one
compact payload (see :mod:`bcfl_engine.he.wire`): residues of ``q_0`` only, bit-packed. Under a
lean preset's context (:mod:`bcfl_engine.he.lean`) the ciphertexts are then switched to ``2^b``
and ``c_0``'s low bits rounded away: a lean payload (:mod:`bcfl_engine.he.lean_wire`).

Level dropping, established on TenSEAL 0.3.18: ``CKKSVector`` has no ``mod_switch`` in Python,
and its ``ct * int`` multiplies by an encoded plaintext and rescales, losing a level and
changing the scale. SEAL's ``Evaluator::mod_switch_to_next`` on a CKKS ciphertext
(``mod_switch_drop_to_next``) *does* just delete the last prime's residues, keeping the scale:
exact, because ``c0 + c1 s = m + e (mod Q)`` implies the same modulo any divisor of ``Q``
(``tests/test_he_client.py`` checks it bit for bit against ``tenseal.sealapi``).
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..errors import HeadroomExceeded, InvalidArgument, NonFiniteUpdate
from . import lean, lean_wire, presets, wire
from .keys import context_info, load_context, tenseal
from .ntt import intt

_SHM = "/dev/shm"


@functools.lru_cache(maxsize=4)
def _seal_tools(ctx: Any) -> tuple[Any, Any, Any]:
    import tenseal.sealapi as sa

    sc = ctx.seal_context().data
    encryptor = sa.Encryptor(sc, ctx.public_key().data) if ctx.has_public_key() else None
    return sc, sa.CKKSEncoder(sc), encryptor


def encrypt(
    vector: Sequence[float] | np.ndarray,
    context: Any,
    *,
    pair: bool | None = None,
    bitpacked: bool = True,
    backend: str | None = None,
) -> bytes:
    """Encrypt a flat update into one compact (or lean) payload at the lowest level.

    Parameters
    ----------
    vector : ``d`` finite reals (flatten a model with :class:`~bcfl_engine.ParamSpec`); within
        the preset's ``bound`` when it has one (:class:`~bcfl_engine.errors.HeadroomExceeded`)
    context : public context bytes (``Keys.public_context()``) or a ``tenseal.Context``
    pair : two reals per complex slot: half the ciphertexts and bytes; decrypt with
        :func:`decrypt` (stock TenSEAL decrypts only the even-indexed reals of a paired vector).
        None: the preset's default (on for "lean", off for the others)
    bitpacked : residues at their prime's bit width (else 8 bytes each); compact payloads only
        (lean payloads are always bit-packed)
    backend : who runs the lean switch (:func:`~bcfl_engine.he.lean.switch`); None: automatic

    Returns
    -------
    bytes : compact: ``64 + 8 K + C * 2 * K * N * bits / 8`` bytes, ``C = ceil(d / slots)``;
        lean (a context of a lean preset such as "lean"): ``84 + C * N * (2 b - k) / 8``
    """
    import tenseal.sealapi as sa

    ctx = load_context(context)
    if not ctx.has_public_key():
        raise InvalidArgument("encrypt needs a context with a public key (Keys.public_context())")
    x = np.asarray(vector, dtype=np.float64).reshape(-1)
    if x.size == 0:
        raise InvalidArgument("cannot encrypt an empty vector")
    if not np.isfinite(x).all():
        raise NonFiniteUpdate(
            f"update holds NaN or infinity at index {int(np.flatnonzero(~np.isfinite(x))[0])}"
        )
    info = context_info(context if isinstance(context, (bytes, bytearray)) else ctx)
    preset = presets.of_context(info.poly_degree, info.scale, info.highest.bits)
    pair = (preset is not None and preset.pair) if pair is None else bool(pair)
    if preset is not None and preset.bound is not None and float(np.abs(x).max()) > preset.bound:
        at = int(np.argmax(np.abs(x)))
        raise HeadroomExceeded(
            f"|x[{at}]| = {abs(x[at])!r} exceeds the preset {preset.name!r}'s bound "
            f"{preset.bound}: its aggregate could wrap (scale the update down, or clip it)"
        )
    level = info.lowest
    if info.scale * 4 >= float(np.prod([float(q) for q in level.primes])):
        raise InvalidArgument(
            f"the lowest level ({level.bits} bits) cannot hold the scale 2^{np.log2(info.scale):.0f}: "
            "encrypt at the top level with stock TenSEAL (ts.ckks_vector) for this context"
        )
    layout = wire.Layout(
        info.poly_degree,
        level.primes,
        level.parms_id,
        info.scale,
        wire.chunk_sizes(x.size, info.slots, pair),
        x.size,
        pair,
    )
    sc, encoder, encryptor = _seal_tools(ctx)
    residues = np.empty(layout.shape, dtype=np.uint64)
    per = info.slots * (2 if pair else 1)
    # The bundled SEAL API saves to a path only: a RAM-backed folder where there is one (0.24 ms
    # a ciphertext against 0.54 on a disk-backed /tmp, at N = 8192).
    with tempfile.TemporaryDirectory(dir=_SHM if os.path.isdir(_SHM) else None) as tmp:
        path = os.path.join(tmp, "ct")
        for c in range(layout.ciphertexts):
            chunk = x[c * per : (c + 1) * per]
            pt = sa.Plaintext()
            if pair:
                z = np.zeros(layout.sizes[c], dtype=np.complex128)
                z.real[: (chunk.size + 1) // 2] = chunk[0::2]
                z.imag[: chunk.size // 2] = chunk[1::2]
                encoder.encode(z.tolist(), list(level.parms_id), info.scale, pt)
            else:
                encoder.encode(chunk.tolist(), list(level.parms_id), info.scale, pt)
            ct = sa.Ciphertext(sc)
            encryptor.encrypt(pt, ct)
            ct.save(path)  # the bundled SEAL API saves to a path only
            with open(path, "rb") as f:
                raw = memoryview(f.read())
            meta, data = wire.seal_body(raw, layout.residues, layout.poly_degree)
            wire.check_meta(meta, layout)
            residues[c] = np.frombuffer(data, "<u8").reshape(2, layout.residues, layout.poly_degree)
    if preset is not None and preset.lean:
        return _lean_payload(residues, layout, preset, backend)
    return wire.write_compact(residues, layout, bitpacked)


def _lean_payload(
    residues: np.ndarray, layout: wire.Layout, preset: presets.Preset, backend: str | None
) -> bytes:
    """Residues ``[C, 2, 1, N]`` at ``q_0`` (NTT form) -> a lean payload (switched to ``2^b``)."""
    (q0,) = layout.primes
    coeffs = intt(np.ascontiguousarray(residues[:, :, 0, :]), q0)
    b, k = preset.switch_bits, preset.drop_bits
    values = lean.switch(torch.from_numpy(coeffs.view(np.int64)), q0, b, k, backend=backend)
    out = lean_wire.LeanLayout(
        layout.poly_degree,
        q0,
        layout.parms_id,
        layout.scale,
        b,
        k,
        layout.sizes,
        layout.d,
        layout.pair,
        float(preset.bound or 0.0),
        int(preset.max_weight_sum or 0),
    )
    return lean_wire.write(values.cpu().numpy(), out)


def decrypt(blob: bytes, secret_context: Any) -> np.ndarray:
    """Decrypt an aggregate (or any payload) -> float64 ``[d]``.

    Accepts TenSEAL ``CKKSVectorProto`` bytes (what :func:`~bcfl_engine.he.aggregate` returns,
    paired or not), compact payloads and lean ones (lifted to ``q_0`` first).
    """
    import tenseal.sealapi as sa

    ts = tenseal()
    ctx = load_context(secret_context)
    if not ctx.has_secret_key():
        raise InvalidArgument("decrypt needs the secret context (Keys.secret_context)")
    blob = bytes(blob)
    if blob[:4] == lean_wire.LEAN_MAGIC:
        lay = lean_wire.layout_of(blob)
        lean_wire.check_context(lay, context_info(ctx))
        blob = lean_wire.to_tenseal(lean_wire.parse(blob, lay), lay)
    elif blob[:4] == wire.COMPACT_MAGIC:
        info = context_info(ctx)
        layout = wire.peek(blob, info)
        residues, _ = wire.parse(blob, layout)
        blob = wire.to_tenseal(residues, layout, layout.scale)
    proto = wire.parse_proto(memoryview(blob))
    try:
        vec = ts.ckks_vector_from(ctx, blob)
    except Exception as exc:
        raise InvalidArgument(f"TenSEAL could not load the payload: {exc}") from None
    if not proto.pair:
        return np.asarray(vec.decrypt(), dtype=np.float64)
    sc, encoder, _ = _seal_tools(ctx)
    decryptor = sa.Decryptor(sc, ctx.secret_key().data)
    parts = []
    for ct, size in zip(vec.ciphertext(), proto.sizes, strict=True):
        pt = sa.Plaintext()
        decryptor.decrypt(ct, pt)
        z = np.asarray(encoder.decode_complex(pt))[:size]
        parts.append(np.stack([z.real, z.imag], axis=1).reshape(-1))
    return np.concatenate(parts)[: proto.d]
