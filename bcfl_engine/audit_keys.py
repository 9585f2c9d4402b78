"""The audit of a round's collective decryption (a round under a multiparty key).

:func:`bcfl_engine.audit.audit` recomputes the round's aggregate from the stored payloads;
:func:`decrypted` then checks what the metadata says of its decryption against the chain and
the store, and recombines the stored shares: the key epoch is the task's on chain (its public
context the round's), the recomputed aggregate has the digest the parties signed, every share
is in the store, signed by the account the epoch names for its party over the committed updates
root and that aggregate, and the shares combine to the committed result. Each difference is a
finding naming the step (and the party) where it shows.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .errors import BcflError, PayloadError


def decrypted(
    ledger: Any,
    task: int,
    round: int,
    store: Any,
    meta: dict[str, Any],
    aggregate: bytes,
    updates_root: bytes,
    he_context: bytes,
    problems: list[str],
    hasher: Callable[[bytes], bytes],
) -> bytes | None:
    """The decrypted sum recombined from the stored shares, or None (with findings) when a
    step fails."""
    from .decryption import SignedShare, share_signer
    from .he.mpepoch import KeyEpoch, check_epoch
    from .round_decrypt import combine

    desc = meta["keys"]
    try:
        keys = KeyEpoch.from_description(desc, he_context)
        check_epoch(ledger, task, keys)
    except BcflError as exc:
        problems.append(f"decryption: the key epoch does not hold: {exc}")
        return None
    if hasher(aggregate).hex() != desc["aggregate"]:
        problems.append(
            "decryption: the aggregate recomputed from the stored payloads is not the one the "
            f"parties decrypted (0x{hasher(aggregate).hex()[:16]}..., metadata "
            f"0x{desc['aggregate'][:16]}...)"
        )
        return None
    shares: dict[int, bytes] = {}
    ok = True
    for party, digest, signature in desc["shares"]:
        who = f"decryption: party {party}"
        try:
            data = store.get(bytes.fromhex(digest), hasher=hasher)
        except (PayloadError, ValueError) as exc:
            problems.append(f"{who}: its share 0x{digest[:16]}... cannot be read: {exc}")
            ok = False
            continue
        signed = SignedShare(party, data, bytes.fromhex(signature))
        try:
            signer = share_signer(
                signed, ledger.domain, task=task, round=round, updates_root=updates_root,
                aggregate=bytes.fromhex(desc["aggregate"]), epoch=keys.epoch,
            )  # fmt: skip
            expected = keys.account_of(party)
        except BcflError as exc:
            problems.append(f"{who}: {exc}")
            ok = False
            continue
        if signer != expected:
            problems.append(
                f"{who}: its share is not signed by its account {expected} over the committed "
                "updates root and this aggregate"
            )
            ok = False
        shares[party] = data
    if not ok:
        return None
    try:
        return combine(keys, aggregate, shares)
    except BcflError as exc:
        problems.append(f"decryption: the stored shares do not combine: {exc}")
        return None
