"""Audit a committed round: recompute it from the payload store, check it against the chain.

The helpers that define a round's bytes (payload encoding, leaves, the aggregate of a round
described by its metadata) live here too: :class:`~bcfl_engine.round.AggregationRound` and
the audit must compute them the same way.

Anyone holding the store (or a copy of the payloads) and a node of the chain can run it:
``bcfl audit --chain URL --task T --round R --store DIR``. It trusts nothing the aggregator
says except what the chain holds, and names every difference it finds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from . import rules
from .aggregate import aggregate
from .errors import AuditError, BackendUnavailable, PayloadError, ShapeMismatch
from .store import PayloadStore
from .updates import keccak256


def encode_update(vector: torch.Tensor | np.ndarray) -> bytes:
    """A plaintext update as payload bytes: ``[d]`` float32, little-endian."""
    return np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1)).tobytes()


def decode_update(data: bytes, dim: int) -> torch.Tensor:
    """The ``[dim]`` float32 vector in plaintext payload bytes; ShapeMismatch if the size differs."""
    if len(data) != 4 * dim:
        raise ShapeMismatch(f"a plaintext update of d={dim} is {4 * dim} bytes; got {len(data)}")
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))


def leaves_of(round: int, records: Sequence[dict[str, Any]]) -> list[bytes]:
    """The Merkle leaves of a round's acceptance records, in their order."""
    from .chain import leaf_hash

    return [
        leaf_hash(
            round,
            r["client"],
            bytes.fromhex(r["digest"]),
            int(r["weight"]),
            bytes.fromhex(r["salt"]),
        )
        for r in records
    ]


def _aggregate(
    meta: dict[str, Any], inputs: Any, weights: Sequence[int], he_context: bytes | None
) -> tuple[Any, bytes]:
    """``(update, result bytes)`` of a round described by ``meta``, from ``inputs``: the
    ``[n, d]`` plaintext updates, or the clients' ciphertext bytes. The one computation that
    :meth:`~bcfl_engine.round.AggregationRound.finalize` and :func:`audit` share."""
    if meta["secure"] == "ckks":
        from . import he

        blob = he.aggregate(list(inputs), weights=list(weights), context=he_context)
        return blob, bytes(blob)
    x = inputs
    info = rules.get(meta["rule"])
    w = torch.tensor(weights, dtype=torch.float64) if info.weighted else None
    pre = [p if isinstance(p, str) else (p[0], p[1]) for p in meta["pre"]]
    out = aggregate(
        x,
        rule=meta["rule"],
        f=meta["f"],
        weights=w,
        backend=meta["backend"],
        pre=pre,
        **meta["params"],
    )
    return out, encode_update(out)


@dataclass
class AuditReport:
    """What :func:`audit` found: ``ok`` when nothing differs, else ``problems`` name each."""

    task: int
    round: int
    problems: list[str]
    checked: list[str]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        head = f"task {self.task} round {self.round}: "
        if self.ok:
            return head + "OK (" + "; ".join(self.checked) + ")"
        return (
            head + f"FAILED, {len(self.problems)} problem(s):\n  - " + "\n  - ".join(self.problems)
        )

    def raise_if_failed(self) -> None:
        if not self.ok:
            raise AuditError(self.summary())


def audit(
    ledger: Any, task: int, round: int, store: PayloadStore | str | os.PathLike[str]
) -> AuditReport:
    """Recompute round ``round`` of ``task`` from ``store`` and check it against ``ledger``.

    Checks, naming whatever differs: every stored payload still hashes to its accepted digest
    and carries its client's signature; the Merkle root of the leaves and the number of
    updates equal the commit; the committed metadata is in the store; the aggregate recomputed
    from the payloads (same rule, parameters and backend) hashes to the committed result
    digest; the contract accepts every client's inclusion proof.
    """
    from .chain import MerkleTree, SignedPayload, participant_leaf, verify_payload

    store = store if isinstance(store, PayloadStore) else PayloadStore(store)
    problems: list[str] = []
    checked: list[str] = []
    commit = ledger.record(task, round)
    if commit is None:
        return AuditReport(
            task, round, [f"the chain has no commit of task {task} round {round}"], []
        )
    records = sorted(store.accepted(task, round), key=lambda r: r["seq"])
    if not records:
        return AuditReport(
            task, round, [f"the store holds no accepted payload of task {task} round {round}"], []
        )
    saved = store.read_round(task, round) or {}
    participants = saved.get("participants")
    if not participants:
        problems.append("the store's round record (round.json) is missing: participants unknown")
        participants = [r["client"] for r in records]
    elif MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root != (
        ledger.task_info(task).participants_root
    ):
        problems.append(
            f"the participants in the store's round record are not those registered for task {task}"
        )
    rows, intact = [], True
    for r in records:
        who = f"client {r['client']} (seq {r['seq']})"
        try:
            data = store.get(r["digest"], verify=False)
        except PayloadError:
            problems.append(f"{who}: payload 0x{r['digest']} is missing from the store")
            intact = False
            continue
        got = keccak256(data)
        if got.hex() != r["digest"]:
            problems.append(
                f"{who}: stored payload altered: it hashes to 0x{got.hex()}, accepted digest 0x{r['digest']}"
            )
            intact = False
        signed = SignedPayload(
            task, round, bytes.fromhex(r["digest"]), r["client"], bytes.fromhex(r["signature"])
        )
        try:
            verify_payload(
                signed, task=task, round=round, participants=participants, domain=ledger.domain
            )
        except PayloadError as exc:
            problems.append(f"{who}: signature check failed: {exc}")
        rows.append(data)
    checked.append(f"{len(records)} payloads and signatures")
    leaves = leaves_of(round, records)
    tree = MerkleTree.from_leaves(leaves)
    if tree.root != commit.updates_root:
        problems.append(
            f"updates root differs: the stored records give 0x{tree.root.hex()}, the chain has 0x{commit.updates_root.hex()}"
        )
    if len(leaves) != commit.n:
        problems.append(
            f"number of updates differs: the store has {len(leaves)}, the chain has {commit.n}"
        )
    checked.append("updates root")
    if saved and saved.get("result_digest") != commit.result_digest.hex():
        problems.append(
            f"result digest differs: the store's round record has 0x{saved.get('result_digest')}, "
            f"the chain has 0x{commit.result_digest.hex()}"
        )
    try:
        meta = json.loads(store.get(commit.meta_hash))
    except (PayloadError, ValueError) as exc:
        problems.append(
            f"committed metadata 0x{commit.meta_hash.hex()} cannot be read from the store: {exc}"
        )
        meta = None
    if meta is not None and intact:
        he_context = store.get(meta["he_context"]) if meta.get("secure") == "ckks" else None
        if he_context is None:
            inputs: Any = torch.stack([decode_update(d, meta["dim"]) for d in rows])
        else:
            inputs = rows
        try:
            _, result_bytes = _aggregate(
                meta, inputs, [int(r["weight"]) for r in records], he_context
            )
            got = keccak256(result_bytes)
        except BackendUnavailable as exc:  # e.g. a GPU round audited on a CPU-only machine
            problems.append(f"cannot recompute the result here: {exc}")
            got = commit.result_digest
        if got != commit.result_digest:
            problems.append(
                f"result digest differs: recomputed 0x{got.hex()} from the stored payloads "
                f"({meta['rule']}, backend {meta['backend']}), the chain has 0x{commit.result_digest.hex()}"
            )
        checked.append(f"result recomputed with {meta['rule']}")
    rejected = [
        records[i]["client"]
        for i in range(len(leaves))
        if not ledger.verify_inclusion(task, round, leaves[i], tree.proof(i))
    ]
    if rejected:
        problems.append(
            f"the contract rejects the inclusion proof of {len(rejected)} client(s): {', '.join(rejected)}"
        )
    checked.append(f"{len(leaves)} inclusion proofs")
    return AuditReport(task, round, problems, checked)
