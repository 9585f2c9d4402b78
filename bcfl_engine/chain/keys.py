"""Key epochs on the registry: which collective CKKS public key a task's clients encrypt under.

A task's owner opens epoch 1, 2, ... (:meth:`KeyEpochs.set_key_epoch`); each names the hash of
the public context bytes and the Merkle root of the key's parties
(:func:`~bcfl_engine.chain.merkle.key_party_leaf`). The latest epoch is in force; a round's
metadata names the epoch it decrypted under, so an audit reads that one back. What the hash and
the parties are is :mod:`bcfl_engine.he.mpepoch`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ChainError
from ._parts import LedgerParts
from .merkle import as_bytes32


@dataclass(frozen=True)
class KeyEpochRecord:
    """One key epoch of a task as the chain holds it."""

    task: int
    epoch: int
    key_hash: bytes
    parties_root: bytes


class KeyEpochs(LedgerParts):
    """The key-epoch calls of :class:`~bcfl_engine.chain.Ledger` (a mixin over its ``call`` and
    ``transact``)."""

    def set_key_epoch(self, task: int, *, key_hash: bytes, parties_root: bytes) -> int:
        """Opens the next key epoch of ``task`` (owner only); returns its number (from 1).

        NotOwner, UnknownTask or EmptyKeyEpoch (a zero hash or root) if the contract refuses.
        """
        key_hash = as_bytes32(key_hash, "key_hash")
        parties_root = as_bytes32(parties_root, "parties_root")
        self.transact("setKeyEpoch", task, key_hash, parties_root)
        epoch = self.key_epoch_count(task)
        held = self.key_epoch(task, epoch)
        if held is None or (held.key_hash, held.parties_root) != (key_hash, parties_root):
            raise ChainError(f"key epoch {epoch} of task {task} is not the one just set")
        return epoch

    def key_epoch_count(self, task: int) -> int:
        """How many key epochs ``task`` has had (0: none)."""
        return int(self.call("keyEpochCount", task))

    def key_epoch(self, task: int, epoch: int | None = None) -> KeyEpochRecord | None:
        """Key epoch ``epoch`` of ``task`` (None: the latest), or None if there is none."""
        if epoch is None:
            epoch = self.key_epoch_count(task)
        if epoch < 1 or epoch > self.key_epoch_count(task):
            return None
        key_hash, parties_root = self.call("keyEpoch", task, epoch)
        return KeyEpochRecord(task, epoch, bytes(key_hash), bytes(parties_root))
