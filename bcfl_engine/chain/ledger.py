"""The ledger client: one round registry on one chain, seen from one account.

>>> from bcfl_engine.chain import Ledger, MerkleTree
>>> ledger = Ledger.embedded()                     # doctest: +SKIP
>>> task = ledger.create_task(aggregator=ledger.sender, participants=[...], model_spec=b"cnn")
>>> receipt = ledger.commit_round(task, 1, updates_root=tree.root, result_digest=d, meta=b"", n=3)
>>> ledger.verify_inclusion(task, 1, tree.leaves[0], tree.proof(0))
True

Every contract revert surfaces as a :class:`~bcfl_engine.chain.errors.ContractRevert` subclass
named after the Solidity error, on the embedded chain and on a JSON-RPC node alike. web3,
eth-tester and eth-account are imported on first use (the ``chain`` extra).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from ..errors import ChainError, InvalidArgument
from ..updates import keccak256
from . import _web3, embedded
from ._deps import need
from ._web3 import checksum as _checksum
from .errors import RoundConflict, RoundExists, TransactionFailed, UnknownTask
from .keys import KeyEpochs
from .merkle import ZERO32, MerkleTree, as_bytes32, participant_leaf
from .proofs import Proofs
from .quorum import Quorum
from .records import Meta, Receipt, RoundRecord, TaskInfo, meta_hash
from .seals import Seals
from .signing import PayloadDomain


class Ledger(KeyEpochs, Seals, Quorum, Proofs):
    """A deployed ``RoundRegistry`` and the account that sends transactions to it.

    Build one with :meth:`embedded` (in-process chain, nothing to start) or :meth:`connect`
    (any JSON-RPC URL); :meth:`as_sender` gives the same registry seen from another key.
    """

    def __init__(
        self, w3: Any, address: str, key: bytes | str | None, *, from_block: int = 0
    ) -> None:
        self.w3 = w3
        self.account = None if key is None else need("eth_account").Account.from_key(key)
        self.contract = w3.eth.contract(address=address, abi=_web3.artifact("RoundRegistry")["abi"])
        self.chain_id: int = w3.eth.chain_id
        self.from_block = from_block
        self.dev_keys: list[bytes] = []
        self._records: dict[tuple[int, int], RoundRecord] = {}
        self._origins: dict[int, bytes] = {}
        # Replayed block hash -> the hash it had on the chain it replays (Ledger.replay).
        self._block_names: dict[bytes, bytes] = {}

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def embedded(cls, journal: str | os.PathLike[str] | None = None) -> Ledger:
        """A fresh in-process chain (eth-tester + py-evm, Prague) with a deployed registry.

        ``ledger.dev_keys`` holds the private keys of its 10 funded accounts; the first one
        deploys and sends. With ``journal`` (a folder), every transaction is recorded there so
        that :meth:`replay` rebuilds this chain in another process (see :mod:`.embedded`).
        """
        w3, keys = _web3.embedded_chain()
        if journal is not None:
            embedded.record(w3, journal)
        ledger = cls.deploy(w3, keys[0])
        ledger.dev_keys = keys
        if journal is not None:
            embedded.set_registry(journal, ledger.address)
        return ledger

    @classmethod
    def replay(cls, journal: str | os.PathLike[str], address: str | None = None) -> Ledger:
        """Read-only: the registry of an embedded chain rebuilt from its ``journal`` folder
        (at ``address``, default the journal's registry)."""
        w3, manifest, blocks = embedded.replay(journal)
        ledger = cls.at(w3, address or manifest["registry"])
        ledger._block_names = blocks  # a task's origin is its block's hash on the recorded chain
        return ledger

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        key: bytes | str | None = None,
        address: str | None = None,
        timeout: float = 30.0,
    ) -> Ledger:
        """The registry at ``address`` on the node at ``url`` (deployed anew if None).

        Without ``key`` the ledger is read-only (history, proofs, audits).
        """
        w3 = _web3.http_chain(url, timeout)
        if address is None:
            if key is None:
                raise InvalidArgument(
                    "deploying a registry needs key=; got neither key nor address"
                )
            return cls.deploy(w3, key)
        return cls.at(w3, address, key)

    @classmethod
    def at(cls, w3: Any, address: str, key: bytes | str | None = None) -> Ledger:
        """The registry already deployed at ``address``; ChainError if its code is not ours."""
        checksum = _checksum(w3, address)
        expected = _web3.artifact("RoundRegistry")["deployedBytecode"]
        code = "0x" + bytes(w3.eth.get_code(checksum)).hex()
        if code != expected:
            raise ChainError(
                f"no RoundRegistry at {address}: its code ({len(code) // 2 - 1} bytes) differs "
                f"from the packaged artifact ({len(expected) // 2 - 1} bytes)"
            )
        return cls(w3, checksum, key)

    @classmethod
    def deploy(cls, w3: Any, key: bytes | str) -> Ledger:
        """Deploys a new registry from ``key``'s account."""
        art = _web3.artifact("RoundRegistry")
        factory = w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"])
        account = need("eth_account").Account.from_key(key)
        receipt = _send(w3, account, factory.constructor())
        return cls(w3, receipt["contractAddress"], key, from_block=receipt["blockNumber"])

    def as_sender(self, key: bytes | str) -> Ledger:
        """This registry, sending from the account of ``key`` (shares the round cache)."""
        other = Ledger(self.w3, self.address, key, from_block=self.from_block)
        other.dev_keys, other._records = self.dev_keys, self._records
        other._origins, other._block_names = self._origins, self._block_names
        return other

    @property
    def address(self) -> str:
        return str(self.contract.address)

    @property
    def sender(self) -> str:
        """The address transactions are sent from; ChainError on a read-only ledger."""
        return str(self._signer().address)

    def _signer(self) -> Any:
        if self.account is None:
            raise ChainError(
                "this ledger is read-only: pass key= to Ledger.connect to send transactions"
            )
        return self.account

    @property
    def domain(self) -> PayloadDomain:
        """The signature domain of this chain and registry (see :mod:`.signing`)."""
        return PayloadDomain(self.chain_id, self.address)

    # ---- generic calls ------------------------------------------------------------------
    def call(self, fn: str, *args: Any) -> Any:
        """Evaluates a view function by ``eth_call``; reverts become typed errors."""
        try:
            return getattr(self.contract.functions, fn)(*args).call()
        except Exception as exc:
            raise _web3.translate(exc) from exc

    def transact(self, fn: str, *args: Any) -> Receipt:
        """Sends a transaction calling ``fn``; reverts become typed errors."""
        r = _send(self.w3, self._signer(), getattr(self.contract.functions, fn)(*args))
        return Receipt(bytes(r["transactionHash"]), int(r["gasUsed"]), int(r["blockNumber"]))

    # ---- tasks --------------------------------------------------------------------------
    def create_task(
        self,
        *,
        aggregator: str | None = None,
        participants: Sequence[str],
        model_spec: bytes,
        aggregators: Sequence[str] | None = None,
        threshold: int | None = None,
    ) -> int:
        """Registers a task owned by the sender; returns its id.

        ``participants`` become the task's participants root (a :class:`MerkleTree` over
        :func:`participant_leaf`); ``model_spec`` is stored as its keccak256. One
        ``aggregator`` commits rounds; or ``aggregators`` and ``threshold`` name a quorum whose
        ``threshold`` agreeing attestations make a round final (:mod:`.quorum`).
        """
        if len(participants) == 0:
            raise InvalidArgument("a task needs at least one participant; got 0")
        first, members = self._quorum_args(aggregator, aggregators, threshold)
        root = MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root
        fn = self.contract.functions.createTask(
            _checksum(self.w3, first), root, keccak256(model_spec)
        )
        receipt = _send(self.w3, self._signer(), fn)
        topic = self.contract.events.TaskCreated().topic
        for log in receipt["logs"]:
            if bytes(log["topics"][0]) == bytes.fromhex(topic.removeprefix("0x")):
                task = int.from_bytes(bytes(log["topics"][1]), "big")
                if members is not None:
                    self.transact("setQuorum", task, members, threshold)
                return task
        raise ChainError("createTask was mined without a TaskCreated event")

    def set_aggregator(self, task: int, aggregator: str) -> Receipt:
        """Hands the aggregator role to ``aggregator`` (owner only)."""
        return self.transact("setAggregator", task, _checksum(self.w3, aggregator))

    def task_origin(self, task: int) -> bytes:
        """The hash of the block that created ``task`` (from its ``TaskCreated`` event).

        With the chain id, the registry address and the task id, it names one task on one
        chain: a fresh deployment that hands out the same id at the same address (a new
        embedded chain, a restarted dev node) has another block hash. UnknownTask if no
        such event exists.
        """
        if task not in self._origins:
            logs = self.contract.events.TaskCreated.get_logs(
                argument_filters={"task": task}, from_block=self.from_block
            )
            if not logs:
                raise UnknownTask(
                    f"task {task} was not created on this registry (no TaskCreated event)",
                    "UnknownTask",
                    {"task": task},
                )
            block = bytes(logs[0]["blockHash"])  # immutable once mined
            self._origins[task] = self._block_names.get(block, block)
        return self._origins[task]

    def task_info(self, task: int) -> TaskInfo:
        owner, aggregator, proot, spec = self.call("getTask", task)
        return TaskInfo(task, owner, aggregator, bytes(proot), bytes(spec))

    # ---- rounds -------------------------------------------------------------------------
    def commit_round(
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
        """Commits a round: one storage slot and one event, whatever ``n`` is.

        Re-committing a round with the data it already holds is a no-op (``noop=True``,
        ``gas_used=0``); with other data it raises :class:`RoundConflict`.
        """
        fields = (
            as_bytes32(updates_root, "updates_root"),
            ZERO32
            if contributions_root is None
            else as_bytes32(contributions_root, "contributions_root"),
            as_bytes32(result_digest, "result_digest"),
            meta_hash(meta),
            n,
        )
        if (noop := self._same_as_committed(task, round, fields)) is not None:
            return noop
        try:
            return self.transact("commitRound", task, round, *fields)
        except RoundExists:  # committed by someone else since we looked
            if (noop := self._same_as_committed(task, round, fields)) is not None:
                return noop
            raise

    def _same_as_committed(self, task: int, round: int, fields: tuple) -> Receipt | None:
        if self.round_root(task, round) is None:
            return None
        rec = self.record(task, round)
        if rec is None:
            raise ChainError(f"round {round} of task {task} has a root but no RoundCommitted event")
        held = (rec.updates_root, rec.contributions_root, rec.result_digest, rec.meta_hash, rec.n)
        names = ("updates_root", "contributions_root", "result_digest", "meta_hash", "n")
        diff = [
            f"{k}: chain {_show(h)} vs given {_show(g)}"
            for k, h, g in zip(names, held, fields, strict=True)
            if h != g
        ]
        if diff:
            raise RoundConflict(
                f"round {round} of task {task} is committed with other data: " + "; ".join(diff)
            )
        return Receipt(None, 0, rec.block_number, noop=True)

    def round_root(self, task: int, round: int) -> bytes | None:
        """The stored root of a round, or None if it has no commit."""
        root = bytes(self.call("roundRoot", task, round))
        return None if root == ZERO32 else root

    def latest_round(self, task: int) -> int:
        """The last committed round of ``task`` (0 if none)."""
        return int(self.call("latestRound", task))

    def history(self, task: int) -> list[RoundRecord]:
        """Every committed round of ``task``, in order, read back from the events."""
        return sorted(self._records_from_logs({"task": task}), key=lambda r: r.round)

    def record(self, task: int, round: int) -> RoundRecord | None:
        """The committed round ``round`` of ``task`` from its event, or None."""
        if (task, round) not in self._records:
            self._records_from_logs({"task": task, "round": round})
        return self._records.get((task, round))

    def _records_from_logs(self, filters: dict[str, int]) -> list[RoundRecord]:
        logs = self.contract.events.RoundCommitted.get_logs(
            argument_filters=filters, from_block=self.from_block
        )
        out = []
        for log in logs:
            a = log["args"]
            rec = RoundRecord(
                a["task"], a["round"], bytes(a["updatesRoot"]), bytes(a["contributionsRoot"]),
                bytes(a["resultDigest"]), bytes(a["metaHash"]), a["n"],
                int(log["blockNumber"]), bytes(log["transactionHash"]),
            )  # fmt: skip
            self._records[(rec.task, rec.round)] = rec  # immutable once mined
            out.append(rec)
        return out


def _show(v: Any) -> str:
    return "0x" + v.hex() if isinstance(v, bytes) else str(v)


def _send(w3: Any, account: Any, fn: Any) -> Any:
    """Builds (gas estimated by the node), signs locally and sends; waits for the receipt."""
    try:
        tx = fn.build_transaction(
            {
                "from": account.address,
                "nonce": w3.eth.get_transaction_count(account.address, "pending"),
            }
        )
    except Exception as exc:  # the estimate runs the call: a revert shows up here
        raise _web3.translate(exc) from exc
    try:
        tx_hash = w3.eth.send_raw_transaction(account.sign_transaction(tx).raw_transaction)
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, timeout=60)
    except Exception as exc:  # nonce, funds, a node gone or slow: not a revert, still typed
        raise TransactionFailed(f"transaction from {account.address} was not mined: {exc}") from exc
    if receipt["status"] != 1:
        raise TransactionFailed(
            f"transaction 0x{bytes(tx_hash).hex()} failed (gas used {receipt['gasUsed']})"
        )
    return receipt
