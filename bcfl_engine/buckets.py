"""Buckets of a robust secure round: which clients' ciphertexts are summed together.

Bucketing (Karimireddy, He and Jaggi, ICLR 2022) makes a Byzantine-robust rule work on encrypted
updates: the ``n`` clients are shuffled into ``b = n // s`` buckets of ``s`` or ``s + 1``, each
bucket is summed homomorphically and only the bucket sums are decrypted; the rule then runs on
the ``b`` bucket means. ``f`` Byzantine clients contaminate at most ``f`` buckets, so the rule
needs its precondition on ``(b, f)``; each decrypted value hides at least ``s`` updates.

The shuffle must be one the aggregator cannot steer: :func:`seed` hashes the round's sealed
updates root with the hash of the block mined after the seal (:mod:`bcfl_engine.chain.seals`),
and :func:`assign` draws the permutation from it (Fisher-Yates over a keccak-256 stream, each
index by rejection sampling: no modulo bias). Anyone holding the chain redraws the same
buckets; changing any payload changes the root, hence the buckets. This module owns the seed,
the draw and the bucket size.
"""

from __future__ import annotations

from collections.abc import Iterator

from .errors import InvalidArgument, PreconditionError
from .updates import keccak256

DOMAIN = b"bcfl-buckets/1"
"""Separates the bucket seed from every other hash of a root."""


def seed(updates_root: bytes, beacon: bytes) -> bytes:
    """The 32-byte seed of a round's buckets: its sealed root and the next block's hash."""
    if len(updates_root) != 32 or len(beacon) != 32:
        raise InvalidArgument("a bucket seed takes a 32-byte root and a 32-byte block hash")
    return keccak256(DOMAIN + bytes(updates_root) + bytes(beacon))


def bucket_size(rule: str, n: int, f: int, requested: int | None = None) -> int:
    """The bucket size ``s`` of a round of ``n`` clients under ``rule`` tolerating ``f``:
    ``requested`` if its ``n // s`` buckets meet the rule's precondition, else (None) the
    largest ``s >= 2`` whose buckets do. PreconditionError naming what fails otherwise."""
    from . import rules

    info = rules.get(rule)
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise InvalidArgument(f"a bucketed round needs at least 2 clients; got {n!r}")

    def holds(s: int) -> bool:
        b = n // s
        return b >= 1 and (info.precondition is None or info.precondition.holds(b, f))

    if requested is not None:
        if isinstance(requested, bool) or not isinstance(requested, int) or not 2 <= requested <= n:
            raise InvalidArgument(f"bucket_size must be an int in [2, {n}]; got {requested!r}")
        if not holds(requested):
            assert info.precondition is not None
            raise PreconditionError(
                f"{rule} requires {info.precondition.text} on its buckets: {n} clients in "
                f"buckets of {requested} make {n // requested}, with f={f}"
            )
        return requested
    for s in range(n // 2, 1, -1):
        if holds(s):
            return s
    assert info.precondition is not None  # without one, buckets of n // 2 always do
    least = info.precondition.min_clients(f)
    raise PreconditionError(
        f"{rule} requires {info.precondition.text} on its buckets: with f={f} that is "
        f"{least} buckets of at least 2, {2 * least} clients; the round has {n}"
    )


def _stream(seed_bytes: bytes) -> Iterator[int]:
    counter = 0
    while True:
        block = keccak256(seed_bytes + counter.to_bytes(8, "big"))
        counter += 1
        for i in range(0, 32, 8):
            yield int.from_bytes(block[i : i + 8], "big")


def assign(seed_bytes: bytes, n: int, s: int) -> list[list[int]]:
    """The buckets of clients ``0 .. n - 1`` (in acceptance order): ``n // s`` buckets, the
    first ``n % (n // s)`` of ``s + 1`` and the rest of ``s``, each sorted."""
    if len(seed_bytes) != 32:
        raise InvalidArgument("a bucket seed is 32 bytes")
    if not 2 <= s <= n:
        raise InvalidArgument(f"bucket size {s} out of [2, {n}]")
    perm = list(range(n))
    draws = _stream(bytes(seed_bytes))
    for i in range(n - 1, 0, -1):
        bound = i + 1
        limit = (1 << 64) - (1 << 64) % bound  # rejection: every j equally likely
        while (x := next(draws)) >= limit:
            pass
        j = x % bound
        perm[i], perm[j] = perm[j], perm[i]
    b = n // s
    extra = n - b * s
    out, at = [], 0
    for k in range(b):
        size = s + (1 if k < extra else 0)
        out.append(sorted(perm[at : at + size]))
        at += size
    return out
