"""CKKS decoding without a secret key: plaintext polynomials (NTT form, RNS) to real values.

What a collective decryption ends with (``c0 + sum d_i``, :mod:`bcfl_engine.he.multiparty`),
in SEAL's conventions (checked against TenSEAL's decoder in ``tests/test_decode.py``):

1. back to coefficients: the inverse NTT over each prime (:mod:`bcfl_engine.he.ntt`);
2. CRT to the centered integer ``m_j`` in ``(-Q/2, Q/2]`` and division by the scale. One prime:
   the centered residue. Two: Garner's form ``m = x_0 + q_0 t``, ``t = (x_1 - x_0) q_0^-1 mod
   q_1`` taken in ``(-q_1/2, q_1/2]``, exact in integers and rounded once to float64 (relative
   error 2^-53; a value's absolute error stays ~2^-53 of its magnitude). More primes: Python
   integers;
3. the canonical embedding: slot ``i`` holds ``m(zeta^(3^i mod 2N))`` for ``zeta = exp(i pi /
   N)`` (SEAL's generator 3); all ``N`` odd powers at once by one complex FFT of
   ``m_j zeta^j``. A real vector is the real parts; a paired one (two reals per slot) interleaves
   real and imaginary parts.
"""

from __future__ import annotations

import functools

import numpy as np

from ..errors import InvalidArgument
from . import ntt as T


@functools.lru_cache(maxsize=8)
def slot_index(n: int) -> np.ndarray:
    """``k_i = (3^i mod 2N - 1) / 2`` for ``i < N / 2``: the FFT bin of slot ``i``."""
    e = np.empty(n // 2, dtype=np.int64)
    cur = 1
    for i in range(n // 2):
        e[i] = cur
        cur = cur * 3 % (2 * n)
    return (e - 1) // 2


def centered(x: np.ndarray, primes: tuple[int, ...]) -> np.ndarray:
    """Residues ``[..., K, N]`` (coefficients, not NTT form) -> centered integers as float64
    ``[..., N]``."""
    if len(primes) == 1:
        return T.to_signed(x[..., 0, :], primes[0]).astype(np.float64)
    if len(primes) == 2:
        q0, q1 = primes
        x0, x1 = x[..., 0, :], x[..., 1, :]
        inv = pow(q0 % q1, -1, q1)
        diff = T.submod(x1, x0 % np.uint64(q1), q1)
        w = np.array(inv, dtype=np.uint64)
        t = T.mulmod_shoup(diff, w, T.shoup(w, q1), np.uint64(q1))
        ts = T.to_signed(t, q1)  # m = x0 + q0 t, centered with t
        # For t < 0 write m = (x0 - q0) + q0 (t + 1): a small negative m is then exact.
        neg = ts < 0
        low = x0.astype(np.int64) - np.where(neg, np.int64(q0), np.int64(0))
        high = ts + neg.astype(np.int64)
        return low.astype(np.float64) + float(q0) * high.astype(np.float64)
    big = 1
    for q in primes:
        big *= q
    acc = np.zeros(x.shape[:-2] + x.shape[-1:], dtype=object)
    for k, q in enumerate(primes):
        rest = big // q
        acc = acc + x[..., k, :].astype(object) * (rest * pow(rest % q, -1, q))
    acc = acc % big
    acc = np.where(acc > big // 2, acc - big, acc)
    return acc.astype(np.float64)


def decode(
    m: np.ndarray,
    primes: tuple[int, ...],
    scale: float,
    sizes: tuple[int, ...],
    d: int,
    pair: bool,
) -> np.ndarray:
    """``m`` ``[C, K, N]`` plaintext polynomials in NTT form -> float64 ``[d]``.

    ``sizes[c]``: slots ciphertext ``c`` holds; ``pair``: two reals per slot (real, imaginary).
    """
    c, k, n = m.shape
    if k != len(primes) or len(sizes) != c or not scale > 0:
        raise InvalidArgument(f"decode: {c} x {k} polynomials for {len(sizes)} sizes, {primes}")
    coeffs = np.stack([T.intt(m[:, j], q) for j, q in enumerate(primes)], axis=1)
    vals = centered(coeffs, primes) / scale  # [C, N]
    twist = np.exp(1j * np.pi * np.arange(n) / n)
    spectrum = np.fft.ifft(vals * twist, axis=-1) * n  # bin k: m(zeta^(2k + 1))
    slots = spectrum[:, slot_index(n)]
    parts = []
    for ci, size in enumerate(sizes):
        z = slots[ci, :size]
        parts.append(np.stack([z.real, z.imag], axis=1).reshape(-1) if pair else z.real)
    return np.concatenate(parts)[:d]
