"""A quorum of aggregators on the registry: a round is final when t of m attest the same tuple.

The engine is deterministic, so aggregators that received the same payloads compute the same
(updates root, contributions root, result digest, metadata hash, n): agreement is a byte
comparison. A task's owner names m aggregators and a threshold t (:meth:`Quorum.set_quorum`, or
``Ledger.create_task(aggregators=..., threshold=...)``); each aggregator votes with
:meth:`Quorum.attest_round`; the contract writes the round's root when the t-th distinct
aggregator votes the same tuple (:func:`~bcfl_engine.chain.records.tuple_id`). A vote for
another tuple never overwrites and never blocks. Every vote but the finalizing one is a
``RoundAttested`` event (who voted what); the finalizing vote names the seats that voted
otherwise in one ``AttestationConflicts`` event (a seat bitmask: its gas does not grow with the
number of conflicts), and a later vote for another tuple is an ``AttestationConflict`` naming
the aggregator and both tuples. :meth:`Quorum.round_status` reads all of it back as one list of
:class:`Conflict`. m = 1 is the single aggregator of ``commit_round``.

What replicas must do to agree. A replica's tuple is a pure function of what it accepted, in
the order it accepted it: the leaves (so the updates root) are in acceptance order, and a
plaintext rule sums the batch's rows in that order (a float mean's bits depend on it). So every
replica of a round must

1. accept the same set of payloads: every client sends each payload to every replica, and the
   replicas close the round at one agreed cutoff (a replica that missed a payload votes another
   ``n`` and root, and is evidence);
2. take each client's own salt (``Payload.salt``): a replica draws one for a payload that
   brings none, and its leaves differ;
3. submit them in one order: :func:`replica_order` (by client address) of the payloads held at
   the cutoff, e.g. as one ``submit_many`` burst, whatever order they arrived in;
4. aggregate with the same rule, parameters and ``backend=`` (the backend is pinned in the
   metadata whose hash is voted: replicas that pick different backends vote different tuples).

A single aggregator's rounds keep their acceptance order (their committed bytes do not change).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from ..errors import ChainError, InvalidArgument
from ._parts import LedgerParts
from ._web3 import checksum as _checksum
from .errors import AlreadyAttested, RoundConflict
from .merkle import ZERO32, address_bytes, as_bytes32
from .records import Meta, Receipt, RoundRecord, meta_hash, tuple_id

MAX_AGGREGATORS = 8  # RoundRegistry.MAX_AGGREGATORS: each vote reads every seat


class _FromClient(Protocol):
    @property
    def client(self) -> str: ...


P = TypeVar("P", bound=_FromClient)


@dataclass(frozen=True)
class QuorumInfo:
    """The aggregators of a task in seat order and the threshold t (([aggregator], 1) for a
    task with a single aggregator)."""

    aggregators: tuple[str, ...]
    threshold: int


@dataclass(frozen=True)
class RoundTuple:
    """What an aggregator attests for a round (the fields of ``commitRound``)."""

    updates_root: bytes
    contributions_root: bytes
    result_digest: bytes
    meta_hash: bytes
    n: int

    @property
    def id(self) -> bytes:
        return tuple_id(
            self.updates_root, self.contributions_root, self.result_digest, self.meta_hash, self.n
        )


@dataclass(frozen=True)
class Conflict:
    """Evidence: ``aggregator`` attested ``attested`` for a round whose final tuple is ``final``."""

    aggregator: str
    attested: bytes
    final: bytes


@dataclass
class RoundStatus:
    """Who attested what for one round, and which tuple (if any) is final.

    ``attestations`` maps each aggregator to the id of the tuple it attested, in the order the
    chain recorded them; ``tuples`` maps ids to their fields (every tuple some event spelled
    out); ``final`` is the final tuple's id or None; ``conflicts`` the evidence events.
    """

    task: int
    round: int
    quorum: QuorumInfo
    attestations: dict[str, bytes] = field(default_factory=dict)
    tuples: dict[bytes, RoundTuple] = field(default_factory=dict)
    final: bytes | None = None
    conflicts: list[Conflict] = field(default_factory=list)

    @property
    def is_final(self) -> bool:
        return self.final is not None

    def attested(self, tuple: bytes) -> list[str]:
        """The aggregators that attested ``tuple``."""
        return [a for a, t in self.attestations.items() if t == tuple]


class Quorum(LedgerParts):
    """The quorum calls of :class:`~bcfl_engine.chain.Ledger` (a mixin over its ``call``,
    ``transact``, ``contract``, ``record`` and ``commit_round``)."""

    # ---- configuration ------------------------------------------------------------------
    def set_quorum(self, task: int, aggregators: Sequence[str], threshold: int) -> Receipt:
        """Names the m aggregators of ``task`` and its threshold t (owner only; see the module).

        m = 1 (t = 1) hands the task back to one aggregator that commits with ``commit_round``.
        InvalidArgument for a bad quorum (checked here first), NotOwner/UnknownTask from the chain.
        """
        members = _check_quorum(self.w3, aggregators, threshold)
        return self.transact("setQuorum", task, members, threshold)

    def quorum(self, task: int) -> QuorumInfo:
        """The aggregators and threshold of ``task`` (UnknownTask if it has none)."""
        members, threshold = self.call("quorum", task)
        return QuorumInfo(tuple(str(a) for a in members), int(threshold))

    def _quorum_args(
        self,
        aggregator: str | None,
        aggregators: Sequence[str] | None,
        threshold: int | None,
    ) -> tuple[str, list[str] | None]:
        """For ``create_task``: the aggregator ``createTask`` names (the registry itself for a
        quorum, so nobody commits before :meth:`set_quorum`) and the quorum to set, if any."""
        if aggregators is None:
            if aggregator is None:
                raise InvalidArgument("a task needs aggregator= or aggregators=; got neither")
            if threshold not in (None, 1):
                raise InvalidArgument(f"threshold={threshold!r} needs aggregators=")
            return aggregator, None
        if aggregator is not None:
            raise InvalidArgument("give aggregator= or aggregators=, not both")
        if threshold is None:
            raise InvalidArgument("aggregators= needs threshold=")
        members = _check_quorum(self.w3, aggregators, threshold)
        if len(members) == 1:
            return members[0], None
        return self.address, members

    # ---- attesting ----------------------------------------------------------------------
    def attest_round(
        self,
        task: int,
        round: int,
        *,
        updates_root: bytes,
        result_digest: bytes,
        meta: Meta,
        n: int,
        contributions_root: bytes | None = None,
    ) -> Receipt:
        """The sender's vote for round ``round`` of ``task``: ``commit_round`` for an aggregator
        of a quorum (and ``commit_round`` itself for a task with a single aggregator).

        Voting again for the tuple this aggregator already voted is a no-op (``noop=True``);
        for another tuple it raises :class:`RoundConflict`. A vote that disagrees with a final
        round is mined (it is evidence) and returned; :meth:`round_status` tells the outcome.
        """
        if self.call("getTask", task)[1] != self.address:
            return self.commit_round(
                task,
                round,
                updates_root=updates_root,
                result_digest=result_digest,
                meta=meta,
                n=n,
                contributions_root=contributions_root,
            )
        fields = (
            as_bytes32(updates_root, "updates_root"),
            ZERO32
            if contributions_root is None
            else as_bytes32(contributions_root, "contributions_root"),
            as_bytes32(result_digest, "result_digest"),
            meta_hash(meta),
            n,
        )
        if (noop := self._same_as_attested(task, round, tuple_id(*fields))) is not None:
            return noop
        try:
            return self.transact("attestRound", task, round, *fields)
        except AlreadyAttested:  # sent from another process since we looked
            if (noop := self._same_as_attested(task, round, tuple_id(*fields))) is not None:
                return noop
            raise

    def _same_as_attested(self, task: int, round: int, tuple: bytes) -> Receipt | None:
        held = self._vote_of(task, round, self.sender)
        if held is None:
            return None
        if held[0] != tuple:
            raise RoundConflict(
                f"{self.sender} already attested round {round} of task {task} with tuple "
                f"0x{held[0].hex()}; given 0x{tuple.hex()}"
            )
        return Receipt(None, 0, held[1], noop=True)

    def _vote_of(self, task: int, round: int, account: str) -> tuple[bytes, int] | None:
        """The tuple ``account`` attested for the round and the block, or None."""
        rec = self.record(task, round)
        if rec is not None and self._finalizer(rec) == account:
            return rec.tuple, rec.block_number
        logs = self.contract.events.RoundAttested.get_logs(
            argument_filters={"task": task, "round": round, "aggregator": account},
            from_block=self.from_block,
        )
        since = self._quorum_since(task, rec)
        logs = [log for log in logs if _order(log) > since]
        if logs:
            return bytes(logs[0]["args"]["tuple"]), int(logs[0]["blockNumber"])
        return None

    def _quorum_since(self, task: int, rec: RoundRecord | None) -> tuple[int, int]:
        """Where the quorum that votes (or voted) the round was set: votes before it were
        discarded by the change (the last ``QuorumChanged`` before the round's finality)."""
        change = self._quorum_change(task, rec)
        return (-1, -1) if change is None else _order(change)

    def _quorum_change(self, task: int, rec: RoundRecord | None) -> Any:
        """The last ``QuorumChanged`` log of ``task`` before the round's finality (or now)."""
        changes = self.contract.events.QuorumChanged.get_logs(
            argument_filters={"task": task}, from_block=self.from_block
        )
        end = (rec.block_number, -1) if rec is not None else (1 << 62, 0)
        return max((c for c in changes if _order(c) < end), key=_order, default=None)

    def _finalizer(self, rec: RoundRecord) -> str:
        """Who sent the transaction that made the round final (its commit or finalizing vote:
        that vote has no RoundAttested event, its RoundCommitted stands for it)."""
        return str(self.w3.eth.get_transaction(rec.tx_hash)["from"])

    # ---- reading back -------------------------------------------------------------------
    def round_status(self, task: int, round: int) -> RoundStatus:
        """Who attested what for round ``round`` of ``task``, the final tuple, the conflicts.

        The finalizing vote (and a single aggregator's commit) is told by the sender of the
        transaction that emitted ``RoundCommitted``.
        """
        status = RoundStatus(task, round, self.quorum(task))
        filters = {
            "argument_filters": {"task": task, "round": round},
            "from_block": self.from_block,
        }
        events = self.contract.events
        for log in events.TupleProposed.get_logs(**filters):
            a = log["args"]
            tup = RoundTuple(
                bytes(a["updatesRoot"]), bytes(a["contributionsRoot"]), bytes(a["resultDigest"]),
                bytes(a["metaHash"]), int(a["n"]),
            )  # fmt: skip
            status.tuples[bytes(a["tuple"])] = tup
        rec = self.record(task, round)
        if rec is not None:
            tup = RoundTuple(
                rec.updates_root, rec.contributions_root, rec.result_digest, rec.meta_hash, rec.n
            )
            status.final = tup.id
            status.tuples[tup.id] = tup
        change = self._quorum_change(task, rec)
        since = (-1, -1) if change is None else _order(change)
        votes = [
            (_order(log), str(log["args"]["aggregator"]), bytes(log["args"]["tuple"]))
            for log in events.RoundAttested.get_logs(**filters)
            if _order(log) > since
        ]
        if rec is not None:  # the finalizing vote (or a single aggregator's commit)
            votes.append(((rec.block_number, -1), self._finalizer(rec), rec.tuple))
        for _, aggregator, tup_id in sorted(votes):
            status.attestations[aggregator] = tup_id
        status.conflicts = self._conflicts(status, change, filters)
        if status.final is not None and any(c.final != status.final for c in status.conflicts):
            raise ChainError(f"round {round} of task {task}: a conflict names another final tuple")
        return status

    def _conflicts(
        self, status: RoundStatus, change: Any, filters: dict[str, Any]
    ) -> list[Conflict]:
        """The evidence of a round: the seats its finalizing vote named (each one's vote is its
        RoundAttested), then the late votes for another tuple, in chain order."""
        events = self.contract.events
        seats = (change["args"]["aggregators"] if change is not None else ()) or ()
        out: list[Conflict] = []
        for log in sorted(events.AttestationConflicts.get_logs(**filters), key=_order):
            a, named = log["args"], int(log["args"]["seats"])
            for i, account in enumerate(seats):
                if not named >> i & 1:
                    continue
                attested = status.attestations.get(str(account))
                if attested is None or attested == bytes(a["finalTuple"]):
                    raise ChainError(
                        f"round {status.round} of task {status.task}: seat {i} ({account}) is "
                        "named a conflict but has no vote for another tuple"
                    )
                out.append(Conflict(str(account), attested, bytes(a["finalTuple"])))
            if named >> len(seats):
                raise ChainError(f"round {status.round}: a conflict names a seat beyond the quorum")
        for log in sorted(events.AttestationConflict.get_logs(**filters), key=_order):
            a = log["args"]
            out.append(Conflict(str(a["aggregator"]), bytes(a["attested"]), bytes(a["finalTuple"])))
        return out


def replica_order(payloads: Iterable[P]) -> list[P]:
    """``payloads`` in the order every replica of a quorum submits them: by the client's 20
    address bytes (one payload per client and round, so the order is total). Replicas that hold
    the same payloads in any arrival order then accept them in one order and vote one tuple.

    InvalidArgument if a payload's ``client`` is not an address.
    """
    return sorted(payloads, key=lambda p: address_bytes(p.client, "client"))


def _order(log: Any) -> tuple[int, int]:
    return int(log["blockNumber"]), int(log["logIndex"])


def _check_quorum(w3: Any, aggregators: Sequence[str], threshold: int) -> list[str]:
    if isinstance(aggregators, str):
        raise InvalidArgument("aggregators must be a sequence of addresses, not one string")
    m = len(aggregators)
    if not 1 <= m <= MAX_AGGREGATORS:
        raise InvalidArgument(f"a quorum has 1 to {MAX_AGGREGATORS} aggregators; got {m}")
    if not isinstance(threshold, int) or isinstance(threshold, bool) or not 1 <= threshold <= m:
        raise InvalidArgument(f"threshold must be an int in [1, {m}]; got {threshold!r}")
    members = [_checksum(w3, a) for a in aggregators]
    if len(set(members)) != m:
        raise InvalidArgument(f"an aggregator is named twice in {list(aggregators)}")
    return members
