"""Distributed Gaussian noise for differential privacy inside multiparty CKKS decryption shares.

Under a multiparty key (:mod:`bcfl_engine.he.multiparty`) nobody sees an aggregate before the
parties decrypt it, so nobody can add central DP noise to it. Instead each of the ``t`` active
parties adds ``N(0, sigma^2 / t)`` per value to its decryption share, on top of its smudging
noise: the combined decryption carries ``N(0, sigma^2)`` per value, and no party knows more than
its own part of it.

From coefficients to slots (the variance to draw)
-------------------------------------------------
Decoding (:mod:`bcfl_engine.he.decode`) maps the plaintext coefficients ``m_j`` (``j < N``) at
scale ``Delta`` to slot ``i``'s complex value ``z_i = (1/Delta) sum_j m_j zeta_i^j`` with
``zeta_i = exp(i pi (2 k_i + 1) / N)``. Take ``e_j`` iid ``N(0, v)``. Then
``Var(Re z_i) = (v / Delta^2) sum_j cos^2(theta_i j) = v N / (2 Delta^2)``, since
``sum_j cos(2 theta_i j) = Re sum_j exp(2 i theta_i j) = 0`` (``exp(2 i theta_i N) = 1`` and
``exp(2 i theta_i) != 1``: ``2 k_i + 1`` is odd and ``N >= 2`` a power of two). Likewise
``Var(Im z_i) = v N / (2 Delta^2)`` and ``Cov(Re z_i, Im z_i) = (v / 2 Delta^2) sum_j
sin(2 theta_i j) = 0``. Across slots, the ``N`` reals ``(Re z_i, Im z_i)`` of the ``N / 2``
slots are ``sqrt(N / 2) / Delta`` times an orthogonal transform of ``e`` (Parseval for the
twisted DFT, one root of each conjugate pair), so they are iid. Hence::

    v = 2 sigma^2 Delta^2 / N     gives N(0, sigma^2) on every decoded real value,

a real vector's slots and a paired vector's real and imaginary parts alike; a party of ``t``
draws ``v / t`` (:func:`coefficient_std`). Rounding each coefficient to an integer adds at most
1/2 (variance ``<= N / (8 Delta^2)`` per value: ``2^-150`` at ``N = 8192``, ``Delta = 2^80``);
the smudging noise (standard deviation ``2^50`` a coefficient under "threshold") adds ``t N 2^100 / (2 Delta^2)``
(about ``2^-46`` for 3 parties); both are left out of the stated ``sigma``. ``Delta`` is the aggregate's scale: a weighted sum keeps the scale, so
``sigma`` is in the units of the decrypted sum.

Where the bits come from, and why they are deterministic
--------------------------------------------------------
The noise of one share is a pseudorandom function of the party's secret seed, the digest of the
ciphertext's ``c1``, the active set and ``sigma``: BLAKE3's extendable output
(:func:`~bcfl_engine.he.sampling.xof`, the smudging noise's generator, a PRF of the secret seed
under BLAKE3's claims) turned into normals by :func:`bcfl_engine.dp_noise.standard_normal`
(float64 Box-Muller without gaps in the tails). Deterministic, because a party answers a retry
of the same request with the same share (the decryption log relies on it): two shares of one
``c1`` with independent noise would let whoever holds both average this party's noise down, and
two with the same stream but different ``sigma`` differ by ``(sigma_1 - sigma_2) z``, the noise
in the clear; so the log records ``sigma`` and refuses another one for a logged ``c1``. Fresh,
because a different ``c1`` (every new aggregate: new payloads, new encryption randomness) is a
different PRF input: independent noise, unpredictable to anyone without the seed. The float64
log, sin and cos are numpy's; on another machine they may differ in a last bit, so the log also
keeps a digest of the noise, and a recomputation that does not match it is refused
(:func:`check_logged`) rather than published.

What colluding parties learn
----------------------------
Of ``t`` active parties, ``k`` colluding ones know their own parts: the released value's noise
minus theirs is ``N(0, sigma^2 (t - k) / t)``. For ``k = t - 1`` that is one honest party's part,
``sigma^2 / t``: against them the release is the Gaussian mechanism with noise multiplier
``z / sqrt(t)`` instead of ``z`` (:func:`colluding_noise_multiplier`; accounted with
:func:`bcfl_engine.dp.account` at that multiplier). The aggregator and everyone else, holding no
part, face all of ``sigma``. A threshold ``t`` of colluding parties can decrypt any single
update themselves: differential privacy is then moot. The security is passive (as the
smudging's): a party that adds less than its part is not detected, and an audit recombines the
shares bit for bit but cannot see the noise inside them.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ..errors import DecryptionRefused, InvalidArgument
from . import ntt as T
from . import sampling

_TAG = b"bcfl-mp-dp-noise"


def coefficient_std(sigma: float, scale: float, poly_degree: int, active: int) -> float:
    """The standard deviation of one party's coefficient noise: ``sigma * scale * sqrt(2 /
    (N t))`` (module docstring), so that ``t`` parties give ``N(0, sigma^2)`` per decoded value."""
    return sigma * scale * math.sqrt(2.0 / (poly_degree * active))


def check_sigma(sigma: object, headroom: float) -> float | None:
    """``sigma`` as a float, or None for no noise (None or 0); InvalidArgument unless a finite
    number >= 0 far below the preset's ``headroom`` (9.5 sigma, the largest draw, must not
    wrap the aggregate)."""
    if sigma is None:
        return None
    if isinstance(sigma, bool) or not isinstance(sigma, (int, float)) or not math.isfinite(sigma):
        raise InvalidArgument(f"dp_sigma must be a finite number >= 0 or None; got {sigma!r}")
    if sigma < 0 or sigma > headroom / 64:
        raise InvalidArgument(
            f"dp_sigma must be in [0, {headroom / 64:.3g}] (the preset's headroom / 64); got {sigma}"
        )
    return float(sigma) or None


def noise(
    seed: bytes,
    digest: bytes,
    active: tuple[int, ...],
    sigma: float,
    scale: float,
    shape: tuple[int, int],
    primes: tuple[int, ...],
) -> tuple[np.ndarray, bytes]:
    """This party's DP noise for the ciphertexts of ``digest`` and its digest: ``([C, K, N]``
    NTT-form residues over ``primes``, 32 bytes``)``. ``shape`` is ``(C, N)``."""
    from ..dp_noise import standard_normal

    c, n = shape
    count = c * n
    tag = np.asarray(active, dtype="<u4").tobytes()
    raw = sampling.xof(
        _TAG, seed, digest, tag, np.float64(sigma).tobytes(), nbytes=24 * ((count + 1) // 2)
    )
    z = standard_normal(np.frombuffer(raw, dtype="<u8"), count)
    x = np.rint(z * coefficient_std(sigma, scale, n, len(active))).reshape(c, n)
    res = residues(x, primes)
    out = np.empty((c, len(primes), n), dtype=np.uint64)
    for k, q in enumerate(primes):
        out[:, k] = T.ntt(res[:, k], q)
    from blake3 import blake3

    return out, blake3(out.tobytes()).digest()


def residues(x: np.ndarray, primes: tuple[int, ...]) -> np.ndarray:
    """Integers held in float64 ``[..., N]`` (``|x| < 2^127``; check_sigma keeps the noise below
    2^111) -> residues ``[..., K, N]`` mod each prime, exactly: ``|x| = hi 2^64 + lo`` with
    ``0 <= lo < 2^64`` (``lo`` is ``|x|``'s bits below 2^64, at most 53 of them: the float
    subtraction is exact), each part reduced, then negated where ``x < 0``."""
    mag = np.abs(x)
    hi = np.floor(mag / 2.0**64)
    lo = (mag - hi * 2.0**64).astype(np.uint64)
    hi = hi.astype(np.uint64)
    neg = x < 0
    out = np.empty((*x.shape[:-1], len(primes), x.shape[-1]), dtype=np.uint64)
    for k, q in enumerate(primes):
        qq = np.uint64(q)
        w = np.array((1 << 64) % q, dtype=np.uint64)
        r = T.addmod(T.mulmod_shoup(hi % qq, w, T.shoup(w, q), qq), lo % qq, q)
        out[..., k, :] = np.where(neg & (r != 0), qq - r, r)
    return out


def draw(
    seed: bytes, digest: bytes, active: tuple[int, ...], sigma: float | None, layout: Any
) -> tuple[np.ndarray | None, bytes | None]:
    """:func:`noise` for the ciphertexts of ``layout`` (a :class:`~bcfl_engine.he.wire.Layout`:
    scale, ring degree, primes); ``(None, None)`` when ``sigma`` is None."""
    if sigma is None:
        return None, None
    shape = (layout.ciphertexts, layout.poly_degree)
    return noise(seed, digest, active, sigma, layout.scale, shape, layout.primes)


def add_(out: np.ndarray, extra: np.ndarray | None, layout: Any) -> np.ndarray:
    """``out + extra`` ``[C, K, N]`` mod each prime of ``layout``, in place (None adds nothing)."""
    if extra is not None:
        for k, q in enumerate(layout.primes):
            out[:, k] = T.addmod(out[:, k], extra[:, k], q)
    return out


def check_logged(
    party: int, logged: dict[str, str] | None, sigma: float | None, noise_digest: bytes | None
) -> None:
    """DecryptionRefused unless a retry's DP noise is what this party shared before for the same
    ``c1`` and active set: the same ``sigma`` (None: none) and the same noise digest."""
    before = None if logged is None else float(logged["sigma"])
    if before != sigma:
        raise DecryptionRefused(
            f"party {party}: this ciphertext was already shared with DP noise sigma {before}; "
            f"refusing sigma {sigma} (the two shares would reveal the noise)",
            party,
        )
    if logged is not None and noise_digest is not None and logged["noise"] != noise_digest.hex():
        raise DecryptionRefused(
            f"party {party}: the DP noise recomputed here differs from the noise this party "
            "shared for this ciphertext (another machine's floating point?); answer with the "
            "share sent before",
            party,
        )


def log_entry(sigma: float | None, noise_digest: bytes | None) -> dict[str, str] | None:
    """What the decryption log keeps of a share's DP noise (None: no noise)."""
    if sigma is None or noise_digest is None:
        return None
    return {"sigma": repr(sigma), "noise": noise_digest.hex()}


def colluding_noise_multiplier(noise_multiplier: float, active: int, colluding: int) -> float:
    """The noise multiplier the release has against ``colluding`` of the ``active`` parties
    (who subtract their own parts): ``z sqrt((t - k) / t)``; ``z / sqrt(t)`` for ``k = t - 1``."""
    if not 0 <= colluding < active:
        raise InvalidArgument(f"colluding must be in [0, {active - 1}]; got {colluding}")
    return noise_multiplier * math.sqrt((active - colluding) / active)


__all__ = [
    "add_",
    "check_logged",
    "check_sigma",
    "coefficient_std",
    "colluding_noise_multiplier",
    "draw",
    "log_entry",
    "noise",
    "residues",
]
