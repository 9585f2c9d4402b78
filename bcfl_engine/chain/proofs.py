"""Proofs and credits on a committed round: the read-side calls of the ledger.

:class:`Proofs` is a mixin of :class:`~bcfl_engine.chain.Ledger` (over its ``call``,
``transact``, ``record``, ``task_info`` and ``domain``): inclusion of an update leaf in a round,
credits claimed from a round's contributions tree, membership of the task's participants, and a
signed payload checked in this registry's domain.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import ChainError
from ._parts import LedgerParts
from ._web3 import checksum as _checksum
from .merkle import MerkleTree, as_bytes32, participant_leaf
from .records import Receipt
from .signing import SignedPayload, verify_payload


class Proofs(LedgerParts):
    """The proof and credit calls of :class:`~bcfl_engine.chain.Ledger` (a mixin)."""

    def verify_inclusion(self, task: int, round: int, leaf: bytes, proof: Sequence[bytes]) -> bool:
        """Asks the contract whether ``leaf`` is in the round's updates tree by ``proof``.

        ``proof`` is the leaf's proof in the updates tree (:meth:`MerkleTree.proof`); the
        round's contributions root is appended, as the stored root covers both subtrees.
        """
        rec = self.record(task, round)
        full = [*proof, rec.contributions_root] if rec is not None else list(proof)
        return bool(self.call("verifyInclusion", task, round, as_bytes32(leaf, "leaf"), full))

    def claim(
        self, task: int, round: int, *, account: str, credit: int, proof: Sequence[bytes]
    ) -> Receipt:
        """Adds ``credit`` to ``account``'s tally, once per round (anyone may send it).

        ``proof`` is the proof of :func:`contribution_leaf` ``(round, account, credit)`` in the
        round's contributions tree; the updates root is appended.
        """
        rec = self.record(task, round)
        full = [*proof, rec.updates_root] if rec is not None else list(proof)
        return self.transact("claim", task, round, _checksum(self.w3, account), credit, full)

    def credits(self, task: int, account: str) -> int:
        return int(self.call("credits", task, _checksum(self.w3, account)))

    def is_participant(self, task: int, account: str, proof: Sequence[bytes]) -> bool:
        return bool(self.call("isParticipant", task, _checksum(self.w3, account), list(proof)))

    def verify_payload(
        self,
        payload: SignedPayload,
        *,
        task: int,
        round: int,
        participants: Sequence[str],
        data: bytes | None = None,
    ) -> str:
        """:func:`~bcfl_engine.chain.signing.verify_payload` in this registry's domain, after
        checking that ``participants`` are the task's registered participants."""
        registered = self.task_info(task).participants_root
        given = MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root
        if given != registered:
            raise ChainError(f"participants given do not match the root registered for task {task}")
        return verify_payload(
            payload,
            task=task,
            round=round,
            participants=participants,
            domain=self.domain,
            data=data,
        )
