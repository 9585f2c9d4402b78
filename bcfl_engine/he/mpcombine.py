"""Combining the parties' contributions of multiparty CKKS keys (:mod:`bcfl_engine.he.multiparty`):
public shares into the collective public key (checked against their commitments), decryption
shares into values, and the known-answer test that follows every setup.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import InvalidArgument, KeyShareError
from . import mpformat as fmt
from . import ntt as T
from . import sampling
from .keys import tenseal
from .mpcontext import KAT_VALUES, _check_crs, _decode, _residues, c1_digest, common_poly, params

if TYPE_CHECKING:
    from .multiparty import KeyShare


def combine_public(
    shares: Sequence[bytes],
    crs: bytes,
    *,
    commitments: Sequence[bytes] | Mapping[int, bytes],
    preset: str = "threshold",
) -> bytes:
    """The collective public key as public-only TenSEAL context bytes (``ts.context_from``).

    ``commitments`` are the parties' round-1 broadcasts, aligned with ``shares`` or keyed by
    party. Every reveal must match its party's commitment, use ``crs`` and the preset's primes,
    and every committed party must reveal; else :class:`KeyShareError` naming the party.
    """
    crs = _check_crs(crs)
    prm = params(preset)
    parsed = [fmt.read_public_share(bytes(s)) for s in shares]
    if not parsed:
        raise InvalidArgument("combine_public needs at least one public share")
    seen: set[int] = set()
    for s in parsed:
        if s.party in seen:
            raise KeyShareError(f"party {s.party} revealed two public shares", s.party)
        seen.add(s.party)
    if isinstance(commitments, Mapping):
        committed = {int(p): bytes(c) for p, c in commitments.items()}
    else:
        if len(commitments) != len(shares):
            raise InvalidArgument(f"{len(commitments)} commitments for {len(shares)} shares")
        committed = {s.party: bytes(c) for s, c in zip(parsed, commitments, strict=True)}
    for raw, s in zip(shares, parsed, strict=True):
        if s.party not in committed:
            raise KeyShareError(f"party {s.party} revealed a share without a commitment", s.party)
        if fmt.commitment(bytes(raw)) != committed[s.party]:
            raise KeyShareError(
                f"party {s.party}: its public share does not match its commitment", s.party
            )
        if s.crs != crs:
            raise KeyShareError(f"party {s.party}: its public share is for another CRS", s.party)
        if s.primes != prm.key_primes or s.residues.shape[1] != prm.preset.poly_degree:
            raise KeyShareError(
                f"party {s.party}: public share over primes {s.primes}; the preset "
                f"{preset!r} has {prm.key_primes}",
                s.party,
            )
    missing = sorted(set(committed) - seen)
    if missing:
        raise KeyShareError(f"party {missing[0]} committed but revealed no share", missing[0])
    return public_key_context([s.residues for s in parsed], crs, preset)


def public_key_context(
    shares: Sequence[np.ndarray], crs: bytes, preset: str = "threshold"
) -> bytes:
    """``(sum shares, a)`` as a public-only context, no check: :func:`combine_public` checks."""
    prm = params(preset)
    a = common_poly(crs, prm.key_primes, prm.preset.poly_degree)
    pk0 = np.zeros_like(a)
    for s in shares:
        for k, q in enumerate(prm.key_primes):
            pk0[k] = T.addmod(pk0[k], s[k], q)
    return fmt.public_context(prm.template, np.stack([pk0, a]), prm.key_parms_id)


def combine_decryption(
    agg: Any,
    shares: Sequence[bytes] | Mapping[int, bytes],
    *,
    parties: Sequence[int] | None = None,
    threshold: int | None = None,
) -> np.ndarray:
    """Decode ``c0 + sum d_i`` -> float64 ``[d]``: every active party's share of ``agg``.

    ``shares`` may be keyed by the party each came from: a share that names another party is
    refused. ``parties``, when given, are the key's parties: a share or an active party outside them is
    refused; N-of-N (``threshold`` None) every one of them must be active, t-of-n at least
    ``threshold``. Raises :class:`KeyShareError` naming the party for a share of another
    ciphertext, active set or preset, a duplicate, a missing active party, one outside the active
    set or a non-party; nothing is combined then.
    """
    if isinstance(shares, Mapping):
        parsed = []
        for sender, raw in shares.items():
            share = fmt.read_decryption_share(bytes(raw))
            if share.party != sender:
                raise KeyShareError(
                    f"party {sender} sent a decryption share of party {share.party}", sender
                )
            parsed.append(share)
    else:
        parsed = [fmt.read_decryption_share(bytes(s)) for s in shares]
    if not parsed:
        raise InvalidArgument("combine_decryption needs at least one decryption share")
    first = parsed[0]
    if parties is not None:
        members = {int(p) for p in parties}
        for who in [s.party for s in parsed] + list(first.active):
            if who not in members:
                raise KeyShareError(f"party {who} is not a party of this key", who)
        if threshold is None and set(first.active) != members:
            absent = sorted(members - set(first.active))[0]
            raise KeyShareError(
                f"party {absent} is not in the active set: N-of-N needs every party", absent
            )
        if threshold is not None and len(first.active) < threshold:
            raise KeyShareError(
                f"an active set of {len(first.active)} parties; the threshold is {threshold}"
            )
    prm = params(first.preset)
    layout, res, version = _residues(agg, prm.info, "aggregate")
    digest = c1_digest(res[:, 1], layout.parms_id)
    m = res[:, 0].copy()
    seen: set[int] = set()
    for s in parsed:
        if s.party in seen:
            raise KeyShareError(f"party {s.party} sent two decryption shares", s.party)
        seen.add(s.party)
        if s.party not in first.active:
            raise KeyShareError(
                f"party {s.party} is not in the active set {list(first.active)}", s.party
            )
        if s.preset != first.preset or s.active != first.active:
            raise KeyShareError(
                f"party {s.party}: its share is for another preset or active set", s.party
            )
        if s.c1_digest != digest:
            raise KeyShareError(f"party {s.party}: its share is for another ciphertext", s.party)
        if s.residues.shape != m.shape:
            raise KeyShareError(
                f"party {s.party}: share of shape {s.residues.shape}; expected {m.shape}", s.party
            )
        for j, q in enumerate(layout.primes):
            if (s.residues[:, j] >= np.uint64(q)).any():
                raise KeyShareError(
                    f"party {s.party}: a residue of its share is not reduced", s.party
                )
            m[:, j] = T.addmod(m[:, j], s.residues[:, j], q)
    missing = sorted(set(first.active) - seen)
    if missing:
        raise KeyShareError(f"party {missing[0]} of the active set sent no share", missing[0])
    return _decode(m, layout, version, prm)


def kat_vector(crs: bytes, party: int) -> np.ndarray:
    """The known-answer values party ``party`` encrypts after setup (public, from the CRS)."""
    raw = sampling.xof(b"bcfl-mp-kat", crs, party.to_bytes(4, "little"), nbytes=8 * KAT_VALUES)
    return np.frombuffer(raw, "<u8").astype(np.float64) / 2.0**64 * 2 - 1


def known_answer(public: bytes, crs: bytes, parties: Sequence[KeyShare]) -> float:
    """Run a known-answer round in-process: each party encrypts :func:`kat_vector` under
    ``public``, all decrypt the sum together; the largest error, or :class:`KeyShareError` when
    the key does not decrypt (a wrong common polynomial, a missing or foreign share)."""
    from .aggregate import aggregate

    ts = tenseal()
    prm = params(parties[0].preset)
    ctx = ts.context_from(public)
    xs = [kat_vector(crs, p.party) for p in parties]
    payloads = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    agg = aggregate(payloads, context=public)
    active = [p.party for p in parties]
    shares = [
        p.decryption_share(agg, contributions=payloads, active=active, min_clients=len(parties))
        for p in parties
    ]
    err = float(np.abs(combine_decryption(agg, shares) - np.sum(xs, axis=0)).max())
    bound = precision(len(parties), prm.preset.name)
    if not err <= bound:
        raise KeyShareError(f"known-answer test failed: error {err:.3g} > precision {bound:.3g}")
    return err


def precision(parties: int, preset: str = "threshold") -> float:
    """The largest absolute error of a collective decryption by ``parties`` parties: the
    preset's precision (stated for up to 8), growing like ``sqrt(parties)`` beyond (each party's
    smudging noise adds up)."""
    if parties < 1:
        raise InvalidArgument(f"parties must be >= 1; got {parties}")
    return params(preset).preset.precision * max(1.0, (parties / 8) ** 0.5)


def local_setup(
    parties: Sequence[KeyShare], crs: bytes | None = None, *, threshold: int | None = None
) -> tuple[bytes, bytes]:
    """A whole key setup run in one process (tests, demos, one operator simulating the sites):
    commitments, then reveals, their combination, the t-of-n dealing when ``threshold`` is given,
    and the known-answer test. Returns ``(public context bytes, crs)``. Between real parties each
    step is one broadcast round (dealt shares: one private message per pair)."""
    from .mpcontext import new_crs

    if not parties:
        raise InvalidArgument("local_setup needs at least one party")
    crs = new_crs() if crs is None else _check_crs(crs)
    commitments = [p.commitment(crs) for p in parties]
    public = combine_public(
        [p.public_share(crs) for p in parties],
        crs,
        commitments=commitments,
        preset=parties[0].preset,
    )
    if threshold is not None:
        ids = [p.party for p in parties]
        dealt = {p.party: p.deal(threshold=threshold, parties=ids) for p in parties}
        for p in parties:
            p.accept_dealt({dealer: dealt[dealer][p.party] for dealer in ids})
    known_answer(public, crs, parties)
    return public, crs
