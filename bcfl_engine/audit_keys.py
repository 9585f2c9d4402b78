"""The audit of a round decrypted by its parties (a round under a multiparty key).

:func:`bcfl_engine.audit.audit` hands the stored payloads to :func:`decrypted`, which redoes
the round's decryption from the chain and the store, step by step, and names the first step
that differs: the key epoch is the task's on chain (its public context the round's); for a
bucketed round, the seal on chain names the committed updates root and ``n``, the beacon is the
hash of the block after it, and the buckets redrawn from both weigh what the metadata says;
each aggregate recomputed from the payloads (all of them, or one bucket's) has the digest the
parties signed; every party's shares are in the store, signed by the account the epoch names
over the committed root and those aggregates; the shares combine, and the result (the
decrypted sum, or the rule over the bucket means) is what :func:`bcfl_engine.audit.audit`
compares with the committed digest.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from .errors import BcflError, PayloadError


def decrypted(
    ledger: Any,
    task: int,
    round: int,
    store: Any,
    meta: dict[str, Any],
    payloads: Sequence[bytes],
    weights: Sequence[int],
    updates_root: bytes,
    he_context: bytes,
    problems: list[str],
    hasher: Callable[[bytes], bytes],
) -> bytes | None:
    """The round's result bytes redone from the stored shares, or None (with a finding)."""
    from . import he
    from .he.mpepoch import KeyEpoch, check_epoch

    desc = meta["keys"]
    try:
        keys = KeyEpoch.from_description(desc, he_context)
        check_epoch(ledger, task, keys)
    except BcflError as exc:
        problems.append(f"decryption: the key epoch does not hold: {exc}")
        return None
    groups: list[list[int]] = [list(range(len(payloads)))]
    if "buckets" in meta:
        drawn = _buckets(ledger, task, round, meta["buckets"], updates_root, weights, problems)
        if drawn is None:
            return None
        groups = drawn
    aggregates = [
        bytes(
            he.aggregate(
                [payloads[i] for i in g], weights=[weights[i] for i in g], context=he_context
            )
        )
        for g in groups
    ]
    want = desc.get("aggregates")
    if not isinstance(want, list) or len(want) != len(aggregates):
        problems.append(f"decryption: the metadata lists {want!r:.60} as the aggregates")
        return None
    for k, (blob, digest) in enumerate(zip(aggregates, want, strict=True)):
        if hasher(blob).hex() != digest:
            what = f"bucket {k}'s sum" if "buckets" in meta else "the aggregate"
            problems.append(
                f"decryption: {what} recomputed from the stored payloads is not what the "
                f"parties decrypted (0x{hasher(blob).hex()[:16]}..., metadata 0x{str(digest)[:16]}...)"
            )
            return None
    shares = _shares(
        ledger, task, round, store, meta, desc, keys, aggregates, updates_root, problems, hasher
    )
    if shares is None:
        return None
    from .round_decrypt import RESULT_DTYPE, bucket_means, combine

    try:
        plain = combine(keys, aggregates, shares)
    except BcflError as exc:
        problems.append(f"decryption: the stored shares do not combine: {exc}")
        return None
    if "buckets" not in meta:
        return np.ascontiguousarray(plain[0], dtype=RESULT_DTYPE).tobytes()
    from .round_compute import rule_aggregate

    bucket_weights = meta["buckets"]["weights"]
    _, result = rule_aggregate(meta, bucket_means(plain, bucket_weights), bucket_weights)
    return result


def _buckets(
    ledger: Any,
    task: int,
    round: int,
    info: Any,
    updates_root: bytes,
    weights: Sequence[int],
    problems: list[str],
) -> list[list[int]] | None:
    """The round's buckets redrawn from the chain, checked against the metadata."""
    from . import buckets

    seal = ledger.sealed(task, round)
    n = len(weights)
    if seal is None or (seal.updates_root, seal.n) != (updates_root, n):
        problems.append(
            "buckets: the round's seal on chain is missing or names other payloads than the "
            "committed root"
        )
        return None
    try:
        beacon = ledger.block_name(seal.block_number + 1)
        ok = (
            isinstance(info, dict)
            and info.get("seal_block") == seal.block_number
            and info.get("beacon") == beacon.hex()
        )
        if not ok:
            problems.append("buckets: the metadata's seal block or beacon is not the chain's")
            return None
        groups = buckets.assign(buckets.seed(updates_root, beacon), n, info["size"])
    except (BcflError, KeyError, TypeError, ValueError) as exc:
        problems.append(f"buckets: cannot redraw them from the chain: {exc}")
        return None
    if info.get("weights") != [sum(weights[i] for i in g) for g in groups]:
        problems.append("buckets: the metadata's bucket weights are not those of the buckets drawn")
        return None
    return groups


def _shares(
    ledger: Any,
    task: int,
    round: int,
    store: Any,
    meta: dict[str, Any],
    desc: dict[str, Any],
    keys: Any,
    aggregates: Sequence[bytes],
    updates_root: bytes,
    problems: list[str],
    hasher: Callable[[bytes], bytes],
) -> dict[int, list[bytes]] | None:
    """Every party's stored shares, each party's signature checked; None after a finding."""
    from .decryption import SignedShare, digest_list, noise_digest, share_signer
    from .round_dp import read_dp

    try:
        private = read_dp(meta)
    except PayloadError as exc:
        problems.append(f"decryption: the DP parameters cannot be read: {exc}")
        return None
    noise = noise_digest(None if private is None else private[0])
    out: dict[int, list[bytes]] = {}
    ok = True
    for party, digests, signature in desc["shares"]:
        who = f"decryption: party {party}"
        try:
            data = [store.get(bytes.fromhex(d), hasher=hasher) for d in digests]
        except (PayloadError, ValueError, TypeError) as exc:
            problems.append(f"{who}: a share of it cannot be read from the store: {exc}")
            ok = False
            continue
        signed = SignedShare(party, tuple(data), bytes.fromhex(signature))
        try:
            signer = share_signer(
                signed, ledger.domain, task=task, round=round, updates_root=updates_root,
                aggregate=digest_list(aggregates), epoch=keys.epoch, noise=noise,
            )  # fmt: skip
            expected = keys.account_of(party)
        except BcflError as exc:
            problems.append(f"{who}: {exc}")
            ok = False
            continue
        if signer != expected:
            problems.append(
                f"{who}: its shares are not signed by its account {expected} over the committed "
                "updates root and these aggregates"
            )
            ok = False
        out[party] = data
    return out if ok else None
