"""One federated round, end to end: collect signed payloads, aggregate, prove, commit, audit.

:class:`AggregationRound` is what an aggregator runs per round:

1. :meth:`~AggregationRound.submit` checks a client's :class:`Payload`, and
   :meth:`~AggregationRound.submit_many` a burst of them at once (:mod:`bcfl_engine.round_intake`):
   its weight (an int in ``[1, 2**64 - 1]``), its signature over ``(task, round, digest,
   weight)``, participant, duplicate, then its bytes (size and finite values; a CKKS payload
   against the round's first accepted one: same length, level and layout); appends the
   accepted ones to the round's log in the :class:`~bcfl_engine.store.PayloadStore` as one
   group, fsynced, and only then accepts them: a crash after an acceptance loses nothing. Each
   payload is hashed once, checked once and copied once (a plaintext one into the round's
   batch buffer, whose pages are faulted in when the round opens).
2. :meth:`~AggregationRound.finalize` aggregates (any rule on plaintext updates, the
   homomorphic weighted sum on CKKS ciphertexts), hashes the result, builds the Merkle tree
   over ``leaf_hash(round, client, digest, weight, salt)`` in acceptance order and commits the
   root, the result digest and the metadata hash to the ledger in one constant-gas call.

A round created again on the same store and chain resumes: it reads the acceptance records
back in their order, so it commits the same root; once the round is committed on chain it
refuses payloads and :meth:`~AggregationRound.finalize` returns the committed result. The
store keeps a task's rounds under the task's identity on its chain
(:func:`bcfl_engine.protocol.task_key`): a rerun on a fresh chain is a new run.
:func:`audit` recomputes a committed round from the store and the chain alone and names
whatever differs.

The byte format (payload encoding, digest, leaf, signed fields, metadata) is
:mod:`bcfl_engine.protocol`'s; ``encode_update``, ``decode_update`` and ``leaves_of`` are
re-exported here.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from typing import Any

from . import backends, protocol, rules
from .audit import AuditReport, audit
from .errors import (
    InvalidArgument,
)
from .protocol import Payload, decode_update, encode_update, leaves_of, sign_payload
from .round_compute import round_aggregate, rule_aggregate
from .round_decrypt import RESULT_DTYPE, Decryption, bucket_means, decode_result
from .round_dp import PrivateRound
from .round_intake import Intake
from .round_result import RoundResult, committed_result
from .store import PayloadStore
from .updates import UpdateBatch


class AggregationRound(Decryption, PrivateRound, Intake):
    """Collects, aggregates and commits round ``round`` of ``task`` (see the module docstring).

    Parameters
    ----------
    ledger : a :class:`bcfl_engine.chain.Ledger` (its signer must be the task's aggregator, or
        one of its quorum: each replica on its own store attests the round it computed)
    task, round : the task id and the round number (>= 1, rounds in order)
    store : a :class:`PayloadStore` or its folder
    participants : the addresses allowed to submit, in the order the task registered them
    dim : the length of a plaintext update (ignored under CKKS: a ciphertext carries its own)
    rule, f, params, pre, backend : how plaintext updates are aggregated (see
        :func:`bcfl_engine.aggregate`); the backend is pinned in the metadata so an audit
        recomputes the result bit for bit
    secure : None (plaintext) or "ckks"; then ``he_context`` is the public context bytes (a
        lean preset's: clients send lean payloads, and the round refuses a weight that takes
        the weight sum past their headroom, HeadroomExceeded at submit)
    keys : under CKKS, a multiparty key's :class:`~bcfl_engine.he.mpepoch.KeyEpoch` opened on
        chain: the round holds no key, and its parties decrypt the aggregate together
        (:mod:`bcfl_engine.round_decrypt`); the committed result is then the decrypted sum,
        or with a robust ``rule`` the rule over decrypted bucket means
    bucket_size : a robust secure round's bucket size (None: the largest the rule allows for
        ``n`` and ``f``; see :mod:`bcfl_engine.buckets`)
    dp : a :class:`bcfl_engine.dp.GaussianDP` (the mean only; under a multiparty key the parties
        add the noise to the decrypted sum, :mod:`bcfl_engine.dp_shares`): the round releases the
        private mean (sum), commits the DP parameters and the task's spent epsilon in its metadata,
        and finalize refuses (BudgetExceeded, nothing changed) a round past ``dp.budget``
        (:mod:`bcfl_engine.round_dp`)
    """

    def __init__(
        self,
        ledger: Any,
        task: int,
        round: int,
        store: PayloadStore | str | os.PathLike[str],
        *,
        participants: Sequence[str],
        dim: int | None = None,
        rule: str = "mean",
        f: int = 0,
        params: dict[str, Any] | None = None,
        pre: Sequence[Any] = (),
        backend: str | None = None,
        secure: str | None = None,
        he_context: bytes | None = None,
        keys: Any = None,
        bucket_size: int | None = None,
        dp: Any = None,
    ) -> None:
        self._init_dp(dp, rule, pre, params, secure, len(participants), keys)
        if secure not in (None, "ckks"):
            raise InvalidArgument(f"secure must be None or 'ckks'; got {secure!r}")
        if secure == "ckks":
            if he_context is None and keys is None:
                raise InvalidArgument("a CKKS round needs he_context (the public context bytes)")
            bucketed = keys is not None and rule != "mean"
            if (rule != "mean" and keys is None) or (pre and not bucketed):
                raise InvalidArgument(
                    f"a CKKS round sums ciphertexts: rule must be 'mean' with no pre-steps (a "
                    f"robust rule, with pre-steps on the bucket means, needs a multiparty key, "
                    f"keys=); got {rule!r}, pre={list(pre)}"
                )
            if keys is not None:
                if he_context is not None and bytes(he_context) != keys.public:
                    raise InvalidArgument("he_context is not the public key of keys")
                he_context = keys.public
        elif keys is not None:
            raise InvalidArgument("keys= (a multiparty key) needs secure='ckks'")
        elif not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
            raise InvalidArgument(f"a plaintext round needs dim, a positive int; got {dim!r}")
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        from .chain import MerkleTree, participant_leaf
        from .chain.merkle import address_bytes

        self.ledger, self.task, self.round = ledger, task, round
        self.store = store if isinstance(store, PayloadStore) else PayloadStore(store)
        if self.store.readonly:
            raise InvalidArgument(f"a round writes to its store; {self.store} is read-only")
        self.participants = frozenset(address_bytes(p, "participant") for p in participants)
        self._registered = ["0x" + address_bytes(p, "participant").hex() for p in participants]
        # Under CKKS the metadata says dim null (the ciphertexts carry their length).
        self.dim = None if secure == "ckks" else dim
        self.rule, self.f, self.pre = rule, f, list(pre)
        self.params = dict(params or {})
        self.backend, self.secure, self.he_context = backend, secure, he_context
        self.domain = ledger.domain
        self.keys, self.bucket_size = keys, bucket_size
        self._request = None
        self._shares = {}
        self._buckets = None
        if keys is not None:
            from .he.mpepoch import check_epoch

            check_epoch(ledger, task, keys)
        registered = ledger.task_info(task).participants_root
        if MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root != registered:
            raise InvalidArgument(
                f"these {len(participants)} participants (in order) are not the ones registered for task {task}"
            )
        # The task's identity on its chain names its folder: a fresh chain is a fresh run.
        self.key = protocol.task_key(
            ledger.chain_id, ledger.address, task, ledger.task_origin(task)
        )
        self._records: list[dict[str, Any]] = []
        # Plaintext rows are copied once, into the preallocated [participants, d] batch buffer,
        # after submit checked them (so the batch does not check them again).
        self._batch = (
            None
            if secure == "ckks"
            else UpdateBatch(dim or 1, capacity=len(self.participants), allow_nonfinite=True)
        )
        if self._batch is not None:
            # Fault the buffer's pages in now, while no client waits: the copy on the submit
            # path then runs at memory speed (a first touch costs ~3x the copy).
            self._batch.free_rows(self._batch.capacity).zero_()
        # CKKS: each ciphertext is parsed once, against the round's first, and added into one
        # running sum: the round holds one accumulator, whatever n is.
        self._sum = None
        if secure == "ckks":
            from .he.running_sum import for_context

            self._sum = for_context(he_context)  # a lean preset's context: LeanRunningSum
        self._clients: dict[str, dict[str, Any]] = {}
        self.result: RoundResult | None = None
        self._commit = ledger.record(task, round)  # None unless committed on chain already
        self._load(sorted(self.store.accepted(self.key, round), key=_seq))
        if self._commit is None:
            self.store.log(self.key, round).create()  # off the first submit's path
            self._prepare_noise()  # a private round's noise, drawn while no client waits

    def __len__(self) -> int:
        return len(self._records)

    @property
    def clients(self) -> list[str]:
        return [r["client"] for r in self._records]

    def _closed(self) -> str | None:
        return Intake._closed(self) or self._sealed()

    @property
    def committed(self) -> bool:
        """Whether this round is committed on chain (by this run or an earlier one)."""
        return self._commit is not None or self.result is not None

    # ---- aggregating and committing --------------------------------------------------------

    def _decode_result(self, data: bytes) -> Any:
        assert self.dim is not None
        return decode_update(data, self.dim)

    def _meta(
        self,
        backend: str | None,
        keys: dict[str, Any] | None = None,
        buckets: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        context = None
        if self.secure == "ckks":
            assert self.he_context is not None
            context = self.store.put(self.he_context)
        meta = protocol.round_meta(
            task=self.task,
            round=self.round,
            secure=self.secure,
            rule=self.rule,
            f=self.f,
            params=self.params,
            pre=self.pre,
            backend=backend,
            dim=self.dim,
            he_context=context,
            keys=keys,
            buckets=buckets,
        )
        return self._with_dp(meta)  # BudgetExceeded here: before any noise or write

    def _stored(
        self, result_bytes: bytes, meta: dict[str, Any], records: list[dict[str, Any]]
    ) -> tuple[bytes, bytes, list[bytes], Any, dict[str, Any]]:
        """The result and metadata put in the store, and the Merkle tree over ``records``
        (the round's acceptance records, in the leaves' order): ``(result digest, meta hash,
        leaves, tree, round record)``, the record as ``round.json`` holds it before the commit."""
        from .chain import MerkleTree

        result_digest = self.store.put(result_bytes)
        meta_bytes = protocol.encode_meta(meta)
        meta_hash = self.store.put(meta_bytes, digest=protocol.meta_hash(meta_bytes))
        leaves = leaves_of(self.round, records)
        tree = MerkleTree.from_leaves(leaves)
        record = {
            "task": self.task,
            "round": self.round,
            "contract": self.ledger.address,
            "root": tree.root.hex(),
            "result_digest": result_digest.hex(),
            "meta_hash": meta_hash.hex(),
            "n": len(leaves),
            "participants": self._registered,
        }
        return result_digest, meta_hash, leaves, tree, record

    def finalize(self) -> RoundResult:
        """Aggregate the accepted payloads, commit the round, return its :class:`RoundResult`.

        A round already committed on chain is not committed again: its result is read back
        from the store (RoundConflict if the store's records are not those the chain holds).
        """
        if self.result is not None:
            return self.result
        if self._commit is not None:
            self.result = committed_result(
                self._commit,
                self._records,
                self.store,
                self.key,
                decode=(
                    decode_result
                    if self.keys is not None
                    else None
                    if self.secure == "ckks"
                    else self._decode_result
                ),
            )
            return self.result
        if not self._records:
            raise InvalidArgument(f"round {self.round} of task {self.task} has no accepted payload")

        weights = [int(r["weight"]) for r in self._records]
        self._spend()  # a private round past its budget stops here; the accountant off the clock
        t0 = time.perf_counter()
        if self.keys is not None:
            plain, decryption, bucket_info = self._decrypt()
            if bucket_info is None:  # the weighted sum of every payload, decrypted
                meta = self._meta(None, decryption)
                result_bytes = plain[0].astype(RESULT_DTYPE).tobytes()
                update = decode_result(result_bytes)
            else:  # the rule over the decrypted bucket means
                means = bucket_means(plain, bucket_info["weights"])
                kernels = rules.get(self.rule).kernels
                chosen = backends.choose(self.rule, kernels, means, self.backend)
                meta = self._meta(chosen.backend, decryption, bucket_info)
                update, result_bytes = rule_aggregate(meta, means, bucket_info["weights"])
        elif self._sum is not None:
            meta = self._meta(None)
            update = result_bytes = self._sum.result()  # he.aggregate's bytes (the audit's)
        else:
            assert self._batch is not None
            x = self._batch.data
            # Pin the backend in the metadata: an audit must recompute the same bits.
            chosen = backends.choose(self.rule, rules.get(self.rule).kernels, x, self.backend)
            meta = self._meta(chosen.backend)
            update, result_bytes = round_aggregate(
                meta, x, weights, None, self._batch.norms, self._fresh_noise()
            )
        seconds = time.perf_counter() - t0
        result_digest, meta_hash, leaves, tree, record = self._stored(
            result_bytes, meta, self._records
        )
        # Written before the commit: a crash in between replays the same commit (a no-op).
        self.store.write_round(self.key, self.round, record)
        # A quorum's aggregator votes; a single aggregator commits (attest_round is commit_round).
        receipt = self.ledger.attest_round(
            self.task,
            round=self.round,
            updates_root=tree.root,
            result_digest=result_digest,
            meta=meta_hash,
            n=len(leaves),
        )
        gas = int(getattr(receipt, "gas_used", 0) or 0)
        self.store.write_round(self.key, self.round, {**record, "gas_used": gas})
        self.result = RoundResult(
            update,
            result_digest,
            tree.root,
            meta_hash,
            leaves,
            self.clients,
            tree,
            receipt,
            seconds,
            gas,
        )
        return self.result


def _seq(record: Any) -> Any:
    # Sorting must not crash on a malformed record: _load names it.
    seq = record.get("seq") if isinstance(record, dict) else None
    return (0, seq) if isinstance(seq, int) and not isinstance(seq, bool) else (1, 0)


__all__ = [
    "AggregationRound",
    "AuditReport",
    "Payload",
    "RoundResult",
    "audit",
    "decode_update",
    "encode_update",
    "leaves_of",
    "sign_payload",
]
