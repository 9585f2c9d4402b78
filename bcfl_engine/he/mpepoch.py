"""A key epoch: the collective public key a task's clients encrypt under, and who holds it.

After a multiparty setup (:mod:`bcfl_engine.he.multiparty`) the task's owner opens a key epoch
on the registry (:func:`open_epoch`): the hash of the public context bytes (:attr:`KeyEpoch.key_hash`,
the payload digest of :mod:`bcfl_engine.protocol`, so the store names the context by it) and the
Merkle root of the key's parties (:attr:`KeyEpoch.parties_root`: one
:func:`~bcfl_engine.chain.merkle.key_party_leaf` per party: its id, the account that signs its
decryption shares, its public-share commitment, and the threshold). Then:

- a client checks the context it was handed before it encrypts (:func:`check_context`): a
  context the chain does not name (a key the aggregator made alone, say) is refused;
- the aggregator checks the epoch it decrypts under (:func:`check_epoch`), and names it in the
  round's metadata (:meth:`KeyEpoch.describe`), so the audit reads the same epoch back
  (:meth:`KeyEpoch.from_description`) and checks each decryption share's signer.

This module owns that description and the two hashes; nothing else derives them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, KeyEpochError, PayloadError


@dataclass(frozen=True)
class KeyParty:
    """One party of a key: its id (its Shamir point), the account that signs its decryption
    shares, and the commitment to its public share it broadcast during the setup."""

    party: int
    account: str
    commitment: bytes

    def __post_init__(self) -> None:
        from ..chain.merkle import address_bytes

        if isinstance(self.party, bool) or not isinstance(self.party, int) or self.party < 1:
            raise InvalidArgument(f"a party id is an int >= 1; got {self.party!r}")
        object.__setattr__(self, "account", "0x" + address_bytes(self.account, "account").hex())
        if not isinstance(self.commitment, (bytes, bytearray)) or len(self.commitment) != 32:
            raise InvalidArgument(f"party {self.party}: a commitment is 32 bytes")
        object.__setattr__(self, "commitment", bytes(self.commitment))


@dataclass(frozen=True)
class KeyEpoch:
    """A collective public key, its parties and its threshold; ``epoch`` is its number on
    chain (0 until :func:`open_epoch` opened it).

    ``threshold`` is how many parties decrypt together: ``len(parties)`` for N-of-N keys,
    ``t`` after a t-of-n dealing (:meth:`~bcfl_engine.he.multiparty.KeyShare.deal`).
    """

    public: bytes
    parties: tuple[KeyParty, ...]
    threshold: int
    epoch: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.public, (bytes, bytearray)) or not self.public:
            raise InvalidArgument("a key epoch needs the public context bytes")
        object.__setattr__(self, "public", bytes(self.public))
        parties = tuple(sorted(self.parties, key=lambda p: p.party))
        if not parties:
            raise InvalidArgument("a key epoch needs at least one party")
        ids = [p.party for p in parties]
        if len(set(ids)) != len(ids):
            raise InvalidArgument(f"party ids repeat: {ids}")
        if len({p.account for p in parties}) != len(parties):
            raise InvalidArgument("two parties of a key share one account")
        object.__setattr__(self, "parties", parties)
        t = self.threshold
        if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= len(parties):
            raise InvalidArgument(f"threshold must be an int in [1, {len(parties)}]; got {t!r}")
        if isinstance(self.epoch, bool) or not isinstance(self.epoch, int) or self.epoch < 0:
            raise InvalidArgument(f"epoch must be an int >= 0; got {self.epoch!r}")

    @property
    def n_of_n(self) -> bool:
        return self.threshold == len(self.parties)

    @property
    def ids(self) -> list[int]:
        return [p.party for p in self.parties]

    @property
    def key_hash(self) -> bytes:
        """The hash of the public context bytes that the chain records."""
        from ..protocol import payload_digest

        return payload_digest(self.public)

    @property
    def parties_root(self) -> bytes:
        """The Merkle root of the parties (in id order) that the chain records."""
        from ..chain import MerkleTree, key_party_leaf

        leaves = [
            key_party_leaf(p.party, p.account, p.commitment, self.threshold) for p in self.parties
        ]
        return MerkleTree.from_leaves(leaves).root

    def account_of(self, party: int) -> str:
        """The account that signs ``party``'s decryption shares (KeyEpochError: no such party)."""
        for p in self.parties:
            if p.party == party:
                return p.account
        raise KeyEpochError(f"party {party!r:.40} is not a party of key epoch {self.epoch}")

    def describe(self) -> dict[str, Any]:
        """The epoch as a round's metadata names it (the public context goes by its hash)."""
        return {
            "epoch": self.epoch,
            "key_hash": self.key_hash.hex(),
            "parties_root": self.parties_root.hex(),
            "threshold": self.threshold,
            "parties": [[p.party, p.account, p.commitment.hex()] for p in self.parties],
        }

    @classmethod
    def from_description(cls, desc: Mapping[str, Any], public: bytes) -> KeyEpoch:
        """The epoch :meth:`describe` wrote, with its ``public`` bytes; PayloadError if the
        description is malformed or does not hash to what it claims."""
        try:
            parties = tuple(
                KeyParty(int(p[0]), str(p[1]), bytes.fromhex(p[2])) for p in desc["parties"]
            )
            out = cls(public, parties, desc["threshold"], desc["epoch"])
        except (KeyError, TypeError, ValueError, IndexError) as exc:
            raise PayloadError(f"key epoch description is malformed: {exc}") from None
        for name in ("key_hash", "parties_root"):
            if getattr(out, name).hex() != desc.get(name):
                raise PayloadError(f"key epoch description: {name} does not match its contents")
        return out


def parties_of(
    commitments: Mapping[int, bytes], accounts: Mapping[int, str]
) -> tuple[KeyParty, ...]:
    """The :class:`KeyParty` of each party id in ``commitments``; ``accounts`` must name them all."""
    missing = sorted(set(commitments) - set(accounts))
    if missing:
        raise InvalidArgument(f"party {missing[0]} has no account to sign its decryption shares")
    return tuple(KeyParty(i, accounts[i], c) for i, c in sorted(commitments.items()))


def open_epoch(ledger: Any, task: int, keys: KeyEpoch) -> KeyEpoch:
    """Record ``keys`` as the next key epoch of ``task`` (the task's owner sends it); returns
    ``keys`` with its epoch number."""
    epoch = ledger.set_key_epoch(task, key_hash=keys.key_hash, parties_root=keys.parties_root)
    return dataclasses.replace(keys, epoch=epoch)


def check_epoch(ledger: Any, task: int, keys: KeyEpoch) -> None:
    """KeyEpochError unless ``keys`` is key epoch ``keys.epoch`` of ``task`` on chain."""
    held = ledger.key_epoch(task, keys.epoch) if keys.epoch >= 1 else None
    if held is None:
        raise KeyEpochError(
            f"task {task} has no key epoch {keys.epoch}: open it with open_epoch first"
        )
    if held.key_hash != keys.key_hash:
        raise KeyEpochError(
            f"key epoch {keys.epoch} of task {task} names another public key "
            f"(0x{held.key_hash.hex()[:16]}..., this one 0x{keys.key_hash.hex()[:16]}...)"
        )
    if held.parties_root != keys.parties_root:
        raise KeyEpochError(
            f"key epoch {keys.epoch} of task {task} names other parties, accounts, "
            "commitments or threshold"
        )


def check_context(ledger: Any, task: int, public: bytes, epoch: int | None = None) -> int:
    """What a client runs before it encrypts: the epoch number whose key ``public`` is
    (None: the latest, the one in force); KeyEpochError if the chain names another key."""
    from ..protocol import payload_digest

    held = ledger.key_epoch(task, epoch)
    if held is None:
        which = "a key epoch" if epoch is None else f"key epoch {epoch}"
        raise KeyEpochError(f"task {task} has no {which} on chain: encrypt under nothing yet")
    if payload_digest(bytes(public)) != held.key_hash:
        raise KeyEpochError(
            f"this public context is not the key of epoch {held.epoch} of task {task}: "
            "do not encrypt under it"
        )
    return int(held.epoch)


def active_default(keys: KeyEpoch, available: Sequence[int] | None = None) -> tuple[int, ...]:
    """The active set a round asks: every party (N-of-N), or the first ``threshold`` of
    ``available`` (default: all parties) in id order."""
    ids = keys.ids if available is None else sorted(set(available))
    if keys.n_of_n:
        return tuple(keys.ids)
    if len(ids) < keys.threshold:
        raise InvalidArgument(
            f"{len(ids)} parties available; key epoch {keys.epoch} needs {keys.threshold}"
        )
    return tuple(ids[: keys.threshold])
