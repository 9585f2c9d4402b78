"""One federated round, end to end: collect signed payloads, aggregate, prove, commit, audit.

:class:`AggregationRound` is what an aggregator runs per round:

1. :meth:`~AggregationRound.submit` checks a client's :class:`Payload` (signature over
   ``(task, round, keccak(payload))``, participant, duplicate, size, finite values or CKKS
   parameters), writes it to the :class:`~bcfl_engine.store.PayloadStore` (fsynced) and only
   then accepts it: a crash after an acceptance loses nothing;
2. :meth:`~AggregationRound.finalize` aggregates (any rule on plaintext updates, the
   homomorphic weighted sum on CKKS ciphertexts), hashes the result, builds the Merkle tree
   over ``leaf_hash(round, client, digest, weight, salt)`` in acceptance order and commits the
   root, the result digest and the metadata hash to the ledger in one constant-gas call.

A round created again on the same store resumes: it reads the acceptance records back in
their order, so it commits the same root. :func:`audit` recomputes a committed round from the
store and the chain alone and names whatever differs.

Payload bytes: a plaintext update is its flat float32 vector, little-endian
(:func:`encode_update`); a CKKS update is what :func:`bcfl_engine.he.encrypt` returns.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from . import backends, rules
from .audit import AuditReport, _aggregate, audit, decode_update, encode_update, leaves_of
from .errors import (
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
    PayloadError,
    ShapeMismatch,
)
from .store import PayloadStore
from .updates import UpdateBatch, keccak256

FORMAT = "bcfl-round/1"


@dataclass(frozen=True)
class Payload:
    """What a client sends: its address, the payload bytes, its signature, its weight.

    ``weight`` is a positive integer (the client's sample count); ``salt`` hides the leaf and
    is drawn by the aggregator when the client sends none.
    """

    client: str
    data: bytes
    signature: bytes | None
    weight: int = 1
    salt: bytes | None = None


def sign_payload(
    key: Any, task: int, round: int, data: bytes, domain: Any, weight: int = 1
) -> Payload:
    """Client side: sign ``data`` for ``round`` of ``task`` under ``domain`` (the ledger's)."""
    from .chain import sign_payload as _sign

    signed = _sign(key, task=task, round=round, digest=keccak256(data), domain=domain)
    return Payload(signed.client, data, signed.signature, weight)


@dataclass
class RoundResult:
    """What a committed round returns.

    Attributes
    ----------
    update : the aggregate: ``[d]`` float32 tensor, or the CKKS ciphertext bytes
    result_digest, root : keccak256 of the result bytes, the Merkle root of the leaves
    leaves, clients : in acceptance order; ``proof(i)`` gives client i's inclusion proof
    gas_used, seconds : the commit's gas and the aggregation time
    """

    update: Any
    result_digest: bytes
    root: bytes
    meta_hash: bytes
    leaves: list[bytes]
    clients: list[str]
    tree: Any
    receipt: Any
    seconds: float
    gas_used: int = field(default=0)

    def proof(self, i: int) -> list[bytes]:
        return list(self.tree.proof(i))


class AggregationRound:
    """Collects, aggregates and commits round ``round`` of ``task`` (see the module docstring).

    Parameters
    ----------
    ledger : a :class:`bcfl_engine.chain.Ledger` (its signer must be the task's aggregator)
    task, round : the task id and the round number (>= 1, rounds in order)
    store : a :class:`PayloadStore` or its folder
    participants : the addresses allowed to submit, in the order the task registered them
    dim : the length of a plaintext update (None under CKKS)
    rule, f, params, pre, backend : how plaintext updates are aggregated (see
        :func:`bcfl_engine.aggregate`); the backend is pinned in the metadata so an audit
        recomputes the result bit for bit
    secure : None (plaintext) or "ckks"; then ``he_context`` is the public context bytes
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
    ) -> None:
        if secure not in (None, "ckks"):
            raise InvalidArgument(f"secure must be None or 'ckks'; got {secure!r}")
        if secure == "ckks":
            if he_context is None:
                raise InvalidArgument("a CKKS round needs he_context (the public context bytes)")
            if rule != "mean" or pre:
                raise InvalidArgument(
                    f"a CKKS round sums ciphertexts: rule must be 'mean'; got {rule!r}"
                )
        elif not isinstance(dim, int) or dim <= 0:
            raise InvalidArgument(f"a plaintext round needs dim, a positive int; got {dim!r}")
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        from .chain import MerkleTree, participant_leaf
        from .chain.merkle import address_bytes

        self.ledger, self.task, self.round = ledger, task, round
        self.store = store if isinstance(store, PayloadStore) else PayloadStore(store)
        self.participants = frozenset(address_bytes(p, "participant") for p in participants)
        self._registered = ["0x" + address_bytes(p, "participant").hex() for p in participants]
        self.dim, self.rule, self.f, self.pre = dim, rule, f, list(pre)
        self.params = dict(params or {})
        self.backend, self.secure, self.he_context = backend, secure, he_context
        self.domain = ledger.domain
        registered = ledger.task_info(task).participants_root
        if MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root != registered:
            raise InvalidArgument(
                f"these {len(participants)} participants (in order) are not the ones registered for task {task}"
            )
        self._records: list[dict[str, Any]] = []
        # Plaintext rows are copied once, into the preallocated [participants, d] batch buffer;
        # ciphertexts stay as bytes until he.aggregate parses them block by block.
        self._batch = (
            None if secure == "ckks" else UpdateBatch(dim or 1, capacity=len(self.participants))
        )
        self._blobs: list[bytes] = []
        self._clients: set[str] = set()
        self.result: RoundResult | None = None
        for record in sorted(self.store.accepted(task, round), key=lambda r: r["seq"]):
            self._load(record)

    def __len__(self) -> int:
        return len(self._records)

    @property
    def clients(self) -> list[str]:
        return [r["client"] for r in self._records]

    # ---- collecting ----------------------------------------------------------------------

    def _decode(self, client: str, data: bytes) -> Any:
        if self.secure == "ckks":
            from . import he

            # Parse once against the public context: PayloadError naming the client and the fault.
            he.CiphertextBatch(self.he_context, 1).add(client, data)
            return data
        assert self.dim is not None
        try:
            row = decode_update(data, self.dim)
        except ShapeMismatch as exc:
            raise ShapeMismatch(f"client {client}: {exc}") from None
        if not bool(torch.isfinite(row).all()):
            raise NonFiniteUpdate(f"client {client}: the update holds NaN or infinity")
        return row

    def _load(self, record: dict[str, Any]) -> None:
        """Take back an accepted payload from the store (resume), checking it again."""
        from .chain import SignedPayload, verify_payload

        data = self.store.get(record["digest"])
        signed = SignedPayload(
            self.task,
            self.round,
            keccak256(data),
            record["client"],
            bytes.fromhex(record["signature"]),
        )
        verify_payload(
            signed,
            task=self.task,
            round=self.round,
            participants=self.participants,
            domain=self.domain,
        )
        self._take(record, self._decode(record["client"], data))

    def _take(self, record: dict[str, Any], row: Any) -> None:
        if self._batch is None:
            self._blobs.append(row)
        else:
            digest = bytes.fromhex(record["digest"])
            self._batch.add(record["client"], row, float(record["weight"]), digest=digest)
        self._records.append(record)
        self._clients.add(record["client"])

    def submit(self, payload: Payload) -> dict[str, Any]:
        """Check, store durably and accept ``payload``; return its acceptance record.

        Raises a :class:`~bcfl_engine.errors.PayloadError` subclass (unsigned, bad signature,
        replay, not a participant), DuplicateClient (another payload from the same client),
        ShapeMismatch or NonFiniteUpdate, and leaves the round unchanged. Sending an accepted
        payload again returns its record (clients may retry).
        """
        from .chain import SignedPayload, verify_payload

        if self.result is not None:
            raise PayloadError(f"round {self.round} of task {self.task} is already committed")
        if not isinstance(payload, Payload):
            raise InvalidArgument(f"expected a Payload; got {type(payload).__name__}")
        if (
            isinstance(payload.weight, bool)
            or not isinstance(payload.weight, int)
            or payload.weight <= 0
        ):
            raise InvalidArgument(
                f"client {payload.client}: weight must be an int > 0; got {payload.weight!r}"
            )
        digest = keccak256(payload.data)
        signed = SignedPayload(self.task, self.round, digest, payload.client, payload.signature)
        client = verify_payload(
            signed,
            task=self.task,
            round=self.round,
            participants=self.participants,
            domain=self.domain,
        )
        if client in self._clients:
            held = next(r for r in self._records if r["client"] == client)
            if held["digest"] == digest.hex() and held["weight"] == payload.weight:
                return held  # a retry of an accepted payload (e.g. after a restart): idempotent
            raise DuplicateClient(
                f"client {client} already submitted another payload to round {self.round}"
            )
        row = self._decode(client, payload.data)
        salt = payload.salt if payload.salt is not None else os.urandom(32)
        if len(salt) != 32:
            raise InvalidArgument(f"client {client}: salt must be 32 bytes; got {len(salt)}")
        self.store.put(payload.data)
        record = {
            "seq": len(self._records),
            "client": client,
            "digest": digest.hex(),
            "weight": payload.weight,
            "salt": salt.hex(),
            "signature": bytes(payload.signature or b"").hex(),
        }
        self.store.accept(self.task, self.round, client, record)  # durable before acknowledged
        self._take(record, row)
        return record

    # ---- aggregating and committing --------------------------------------------------------

    def _meta(self, backend: str | None) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "format": FORMAT,
            "task": self.task,
            "round": self.round,
            "secure": self.secure,
            "rule": self.rule,
            "f": self.f,
            "params": self.params,
            "pre": self.pre,
            "backend": backend,
            "dim": self.dim,
        }
        if self.secure == "ckks":
            assert self.he_context is not None
            meta["he_context"] = self.store.put(self.he_context).hex()
        return meta

    def finalize(self) -> RoundResult:
        """Aggregate the accepted payloads, commit the round, return its :class:`RoundResult`."""
        if self.result is not None:
            return self.result
        if not self._records:
            raise InvalidArgument(f"round {self.round} of task {self.task} has no accepted payload")
        from .chain import MerkleTree

        weights = [int(r["weight"]) for r in self._records]
        t0 = time.perf_counter()
        if self._batch is None:
            meta = self._meta(None)
            update, result_bytes = _aggregate(meta, self._blobs, weights, self.he_context)
        else:
            x = self._batch.data
            # Pin the backend in the metadata: an audit must recompute the same bits.
            chosen = backends.choose(self.rule, rules.get(self.rule).kernels, x, self.backend)
            meta = self._meta(chosen.backend)
            update, result_bytes = _aggregate(meta, x, weights, None)
        seconds = time.perf_counter() - t0
        result_digest = self.store.put(result_bytes)
        meta_bytes = json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()
        meta_hash = self.store.put(meta_bytes)
        leaves = leaves_of(self.round, self._records)
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
        # Written before the commit: a crash in between replays the same commit (a no-op).
        self.store.write_round(self.task, self.round, record)
        receipt = self.ledger.commit_round(
            self.task,
            round=self.round,
            updates_root=tree.root,
            result_digest=result_digest,
            meta=meta_hash,
            n=len(leaves),
        )
        gas = int(getattr(receipt, "gas_used", 0) or 0)
        self.store.write_round(self.task, self.round, {**record, "gas_used": gas})
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
