"""Deterministic sampling for multiparty CKKS keys: every draw expands SHAKE-256 (an extendable-
output function, FIPS 202) over a domain tag and its inputs, so a party's whole secret state
follows from its 32-byte seed and the common polynomial from the public CRS seed.

- :func:`uniform_mod`: residues uniform below ``q`` by rejection (no modular bias), used for the
  common polynomial ``a``, sampled directly in the NTT domain (a uniform polynomial has uniform
  NTT values, so nothing is lost and one transform is saved);
- :func:`ternary`: coefficients uniform in ``{-1, 0, 1}`` (the secret, as SEAL samples it);
- :func:`gaussian`: rounded normal integers by Box-Muller on 53-bit uniforms, clipped at
  ``clip`` standard deviations (SEAL clips its 3.2-sigma error at 6 sigma); used for the key
  error and, with a large ``sigma``, for the smudging noise of decryption shares.
"""

from __future__ import annotations

import hashlib

import numpy as np


def xof(tag: bytes, *parts: bytes, nbytes: int) -> bytes:
    """``nbytes`` of SHAKE-256 over ``tag`` and ``parts``, each length-prefixed (unambiguous)."""
    h = hashlib.shake_256()
    for p in (tag, *parts):
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest(nbytes)


def uniform_mod(q: int, n: int, tag: bytes, *parts: bytes) -> np.ndarray:
    """``n`` residues uniform in ``[0, q)`` (``uint64``), by rejection on ``bits(q)``-bit words."""
    mask = np.uint64((1 << q.bit_length()) - 1)
    want = n + n // 8 + 16
    while True:  # a prefix of a longer SHAKE output is the shorter one: draws stay deterministic
        words = np.frombuffer(xof(tag, *parts, nbytes=8 * want), dtype="<u8") & mask
        kept = words[words < np.uint64(q)]
        if kept.size >= n:
            return kept[:n].astype(np.uint64)
        want *= 2


def ternary(n: int, tag: bytes, *parts: bytes) -> np.ndarray:
    """``n`` integers uniform in ``{-1, 0, 1}`` (``int64``), by rejection of the byte 255."""
    want = n + n // 64 + 16
    while True:
        raw = np.frombuffer(xof(tag, *parts, nbytes=want), dtype=np.uint8)
        kept = raw[raw < 255]
        if kept.size >= n:
            return (kept[:n] % 3).astype(np.int64) - 1
        want *= 2


def gaussian(n: int, sigma: float, tag: bytes, *parts: bytes, clip: float = 6.0) -> np.ndarray:
    """``n`` rounded normal integers of standard deviation ``sigma`` (``int64``), ``|x| <= clip
    sigma``. Box-Muller on pairs of 53-bit uniforms from the XOF."""
    pairs = (n + 1) // 2
    words = np.frombuffer(xof(tag, *parts, nbytes=16 * pairs), dtype="<u8") >> np.uint64(11)
    u1 = (words[:pairs].astype(np.float64) + 1.0) * 2.0**-53  # (0, 1]: log is finite
    u2 = words[pairs:].astype(np.float64) * 2.0**-53
    r = np.sqrt(-2.0 * np.log(u1))
    z = np.concatenate([r * np.cos(2 * np.pi * u2), r * np.sin(2 * np.pi * u2)])[:n]
    return np.rint(np.clip(z, -clip, clip) * sigma).astype(np.int64)
