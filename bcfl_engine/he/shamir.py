"""Shamir secret sharing of ring elements over RNS primes, in the NTT domain (t-of-n keys).

A dealer shares its key ``s_i`` (NTT form, ``[K, N]``) with the polynomial
``f_i(x) = s_i + c_1 x + ... + c_{t-1} x^{t-1}`` whose coefficients are ring elements uniform
below each prime (Shamir 1979, applied coefficient-wise as Lattigo's Thresholdizer does); party
``j`` receives ``f_i(j)`` from every dealer and keeps ``F(j) = sum_i f_i(j)``, a point of
``F = sum_i f_i`` with ``F(0) = s``. Any ``t`` parties ``A`` recover ``s = sum_{j in A}
lambda_j F(j)`` with the Lagrange coefficients at zero ``lambda_j = prod_{m in A, m != j}
m / (m - j) mod q``; fewer learn nothing about ``s``. Party ids are the public points (non-zero,
distinct below every prime).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from . import ntt as T
from . import sampling


def lagrange_at_zero(j: int, active: Sequence[int], q: int) -> int:
    """``lambda_j`` of the active set at zero, mod ``q``."""
    num, den = 1, 1
    for m in active:
        if m != j:
            num = num * m % q
            den = den * (m - j) % q
    return num * pow(den, -1, q) % q


def scale(x: np.ndarray, c: int, q: int) -> np.ndarray:
    """``c * x mod q`` for residues ``x`` below ``q`` and an integer ``c``."""
    w = np.array(c % q, dtype=np.uint64)
    return T.mulmod_shoup(np.asarray(x, dtype=np.uint64), w, T.shoup(w, q), np.uint64(q))


def deal(
    secret: np.ndarray,
    threshold: int,
    parties: Sequence[int],
    primes: Sequence[int],
    seed: bytes,
) -> dict[int, np.ndarray]:
    """``{j: f(j)}`` for every party ``j``: ``f(0) = secret`` ``[K, N]``, degree ``threshold - 1``,
    coefficients expanded from ``seed`` (the same dealing every time for the same arguments)."""
    k, n = secret.shape
    tag = threshold.to_bytes(2, "little") + np.asarray(parties, dtype="<u4").tobytes()
    coeffs = [
        np.stack(
            [
                sampling.uniform_mod(
                    q,
                    n,
                    b"bcfl-mp-deal",
                    seed,
                    tag,
                    d.to_bytes(2, "little"),
                    i.to_bytes(4, "little"),
                )
                for i, q in enumerate(primes)
            ]
        )
        for d in range(1, threshold)
    ]
    out = {}
    for j in parties:
        acc = np.zeros((k, n), dtype=np.uint64)
        for c in [*coeffs[::-1], secret]:  # Horner: ((c_{t-1} j + c_{t-2}) j + ...) j + s
            for i, q in enumerate(primes):
                acc[i] = T.addmod(scale(acc[i], j, q), c[i], q)
        out[int(j)] = acc
    return out
