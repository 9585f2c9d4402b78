"""Deterministic sampling for multiparty CKKS keys: every draw expands BLAKE3's extendable output
over a domain tag and its inputs, so a party's whole secret state
follows from its 32-byte seed and the common polynomial from the public CRS seed.

- :func:`uniform_mod`: residues uniform below ``q`` by rejection (no modular bias), used for the
  common polynomial ``a``, sampled directly in the NTT domain (a uniform polynomial has uniform
  NTT values, so nothing is lost and one transform is saved);
- :func:`ternary`: coefficients uniform in ``{-1, 0, 1}`` (the secret, as SEAL samples it);
- :func:`binomial`: a centered binomial of standard deviation ``sqrt(eta / 2)`` (the key error);
- :func:`uniform_int`: integers uniform in ``[-B, B]`` (the smudging noise of decryption
  shares: the smudging lemma's distribution).

Every sampler is integer-only (no floating point), so a party's public share and decryption
shares are the same bytes on every machine: a commitment made on one machine matches the reveal
computed on another, and a recomputed share adds no fresh noise.
"""

from __future__ import annotations

import numpy as np


def xof(tag: bytes, *parts: bytes, nbytes: int) -> bytes:
    """``nbytes`` of BLAKE3's extendable output (key derivation mode, context ``"bcfl-mp xof
    v1"``) over ``tag`` and ``parts``, each length-prefixed (unambiguous). BLAKE3 rather than
    SHAKE-256: about 10x faster for the megabytes of smudging noise of a large aggregate."""
    from blake3 import blake3

    h = blake3(derive_key_context="bcfl-mp xof v1")
    for p in (tag, *parts):
        h.update(len(p).to_bytes(8, "little"))
        h.update(p)
    return h.digest(length=nbytes)


def uniform_mod(q: int, n: int, tag: bytes, *parts: bytes) -> np.ndarray:
    """``n`` residues uniform in ``[0, q)`` (``uint64``), by rejection on ``bits(q)``-bit words."""
    mask = np.uint64((1 << q.bit_length()) - 1)
    want = n + n // 8 + 16
    while True:  # a prefix of a longer XOF output is the shorter one: draws stay deterministic
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


def binomial(n: int, eta: int, tag: bytes, *parts: bytes) -> np.ndarray:
    """``n`` centered binomial integers (``int64``): ``popcount(a) - popcount(b)`` of two
    ``eta``-bit words, standard deviation ``sqrt(eta / 2)``, ``|x| <= eta`` (Kyber's error
    distribution; ``eta = 21`` gives 3.24, SEAL's 3.2)."""
    if not 1 <= eta <= 32:
        raise ValueError(f"eta must be in [1, 32]; got {eta}")
    words = np.frombuffer(xof(tag, *parts, nbytes=8 * n), dtype="<u8")
    mask = np.uint64((1 << eta) - 1)
    a = np.bitwise_count(words & mask).astype(np.int64)
    b = np.bitwise_count((words >> np.uint64(32)) & mask).astype(np.int64)
    return a - b


def uniform_int(n: int, bound: int, tag: bytes, *parts: bytes) -> np.ndarray:
    """``n`` integers uniform in ``[-bound, bound]`` (``int64``, ``bound < 2^61``), by rejection:
    integers only, so the same on every machine and numpy version (a share recomputed for a
    retry is the same share, bit for bit)."""
    span = 2 * bound + 1
    mask = np.uint64((1 << span.bit_length()) - 1)
    want = n + n // 4 + 64  # acceptance span / 2^bits: 0.87 for the smudging bound
    while True:
        words = np.frombuffer(xof(tag, *parts, nbytes=8 * want), dtype="<u8") & mask
        kept = words[words < np.uint64(span)]
        if kept.size >= n:
            return kept[:n].astype(np.int64) - bound
        want *= 2
