"""Typed errors of the chain layer: contract reverts and rejected client payloads.

Every revert of ``RoundRegistry`` surfaces as the :class:`ContractRevert` subclass of the same
name as its Solidity error, with the error's arguments in ``.fields``, whether the embedded
chain (eth-tester) or a JSON-RPC node (anvil, geth, ...) raised it.
"""

from __future__ import annotations

from typing import Any

from ..errors import ChainError, PayloadError


class ContractRevert(ChainError):
    """The contract reverted; ``.name`` is its Solidity error, ``.fields`` the arguments."""

    def __init__(self, message: str, name: str = "", fields: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.name = name
        self.fields = fields or {}


class ZeroAddress(ContractRevert):
    """An aggregator of address zero was given."""


class UnknownTask(ContractRevert):
    """No task has this id on this registry."""


class NotOwner(ContractRevert):
    """Only the task's owner may do this (e.g. hand over the aggregator role)."""


class NotAggregator(ContractRevert):
    """Only the task's aggregator may commit rounds."""


class EmptyRound(ContractRevert):
    """A round needs at least one update and a non-zero updates root."""


class RoundExists(ContractRevert):
    """This round is already committed (rounds are append-only)."""


class RoundOutOfOrder(ContractRevert):
    """Round r can only follow round r - 1 (and rounds start at 1)."""


class RoundNotCommitted(ContractRevert):
    """The round asked about has no commit."""


class AlreadyClaimed(ContractRevert):
    """The account already claimed its credit of this round."""


class InvalidProof(ContractRevert):
    """The proof does not lead to the round's stored root."""


class EmptyKeyEpoch(ContractRevert):
    """A key epoch needs a non-zero key hash and a non-zero parties root."""


class UnknownKeyEpoch(ContractRevert):
    """The task has no key epoch of this number."""


class AlreadySealed(ContractRevert):
    """This round's payloads are already sealed (a round is sealed once)."""


class NoQuorum(ContractRevert):
    """The task has a single aggregator: it commits with ``commitRound``, not attestations."""


class BadQuorum(ContractRevert):
    """A quorum needs 1 <= threshold <= aggregators <= MAX_AGGREGATORS."""


class DuplicateAggregator(ContractRevert):
    """An account was named twice in one quorum."""


class AlreadyAttested(ContractRevert):
    """This aggregator already attested this round (one vote per aggregator and round)."""


class AttestationTooLate(ContractRevert):
    """The round was final before the latest final round: it takes no more attestations."""


class RoundConflict(ChainError):
    """A round was re-committed with data other than what the chain holds."""


class TransactionFailed(ChainError):
    """A transaction failed without a revert reason this library knows (out of gas, ...)."""


REVERTS: dict[str, type[ContractRevert]] = {
    cls.__name__: cls
    for cls in (
        ZeroAddress,
        UnknownTask,
        NotOwner,
        NotAggregator,
        EmptyRound,
        RoundExists,
        RoundOutOfOrder,
        RoundNotCommitted,
        AlreadyClaimed,
        InvalidProof,
        EmptyKeyEpoch,
        UnknownKeyEpoch,
        AlreadySealed,
        NoQuorum,
        BadQuorum,
        DuplicateAggregator,
        AlreadyAttested,
        AttestationTooLate,
    )
}


class UnsignedPayload(PayloadError):
    """A payload came without a signature."""


class BadSignature(PayloadError):
    """The signature is malformed or was not made by the claimed client over these fields."""


class ReplayedPayload(PayloadError):
    """A validly signed payload of another round or task was sent again."""


class NotParticipant(PayloadError):
    """The signer is not one of the task's participants."""


class DigestMismatch(PayloadError):
    """The payload's bytes do not hash to the digest that was signed."""


# What each revert means, in words, filled with the revert's decoded arguments.
REVERT_MESSAGES = {
    "ZeroAddress": "the aggregator must be a non-zero address",
    "UnknownTask": "task {task} does not exist on this registry",
    "NotOwner": "{caller} is not the owner of task {task}; only the owner may do this",
    "NotAggregator": "{caller} is not the aggregator of task {task}; only the aggregator commits rounds",
    "EmptyRound": "round {round} of task {task} is empty: expected n >= 1 and a non-zero updates root",
    "RoundExists": "round {round} of task {task} is already committed; rounds are append-only",
    "RoundOutOfOrder": "round {round} of task {task} is out of order: expected round 1 first, "
    "then round r only after round r - 1",
    "RoundNotCommitted": "round {round} of task {task} has no commit",
    "AlreadyClaimed": "{account} already claimed its credit of round {round} of task {task}",
    "InvalidProof": "the proof does not lead to the stored root of round {round} of task {task}",
    "EmptyKeyEpoch": "a key epoch of task {task} needs a non-zero key hash and parties root",
    "UnknownKeyEpoch": "task {task} has no key epoch {epoch}",
    "AlreadySealed": "round {round} of task {task} is already sealed; a round is sealed once",
    "NoQuorum": "task {task} has a single aggregator: it commits rounds, it takes no attestations",
    "BadQuorum": "task {task}: a quorum needs 1 <= threshold <= aggregators <= 8; "
    "got {aggregators} aggregators, threshold {threshold}",
    "DuplicateAggregator": "{aggregator} is named twice in the quorum of task {task}",
    "AlreadyAttested": "{aggregator} already attested round {round} of task {task}",
    "AttestationTooLate": "round {round} of task {task} was final before the latest final "
    "round: it takes no more attestations",
}
