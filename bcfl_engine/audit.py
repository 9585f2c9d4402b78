"""Audit a committed round: recompute it from the payload store, check it against the chain.

The aggregate of a round described by its metadata is recomputed with the call a plaintext
:class:`~bcfl_engine.round.AggregationRound` computes it with (:mod:`bcfl_engine.round_compute`;
a CKKS round sums each ciphertext as it accepts it, to the same bytes as
:func:`bcfl_engine.he.aggregate`). The byte format (payload encoding, digests, leaves, records) is :mod:`bcfl_engine.protocol`'s;
``encode_update``, ``decode_update`` and ``leaves_of`` are re-exported here.

Anyone holding the store (or a copy of it) and a node of the chain can run it:
``bcfl audit --chain URL --task T --round R --store DIR``. It opens the store read-only,
trusts nothing the aggregator says except what the chain holds, and names every difference it
finds: a malformed or altered record, payload, result or metadata is a finding, never a crash.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import protocol
from .errors import AuditError, BackendUnavailable, BcflError, PayloadError
from .protocol import decode_update, encode_update, leaves_of
from .round_compute import round_aggregate
from .store import PayloadStore

__all__ = ["AuditReport", "audit", "decode_update", "encode_update", "leaves_of"]


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
    ledger: Any,
    task: int,
    round: int,
    store: PayloadStore | str | os.PathLike[str] | Sequence[PayloadStore | str | os.PathLike[str]],
) -> AuditReport:
    """Recompute round ``round`` of ``task`` from ``store`` and check it against ``ledger``.

    Checks, naming whatever differs: every record is well formed; every stored payload still
    hashes to its accepted digest and carries its client's signature over its weight; the
    Merkle root of the leaves and the number of updates equal the commit; the store's round
    record says what the chain holds; the committed metadata and result are in the store and
    hash right; the aggregate recomputed from the payloads (same rule, parameters and backend)
    hashes to the committed result digest; the contract accepts every client's inclusion proof.
    A folder path is opened read-only. A list of stores is the union of a round's ingest nodes'
    stores (:class:`~bcfl_engine.audit_nodes.NodeStores`: read in the round's canonical order).
    """
    from .audit_nodes import check_nodes, open_stores

    store = open_stores(store)
    problems: list[str] = []
    checked: list[str] = []
    commit = ledger.record(task, round)
    if commit is None:
        return AuditReport(
            task, round, [f"the chain has no commit of task {task} round {round}"], []
        )
    key = protocol.task_key(ledger.chain_id, ledger.address, task, ledger.task_origin(task))
    raw = store.accepted(key, round, problems=problems)
    if not raw and not problems:
        return AuditReport(
            task, round, [f"the store holds no accepted payload of task {task} round {round}"], []
        )
    records = _check_records(raw, problems)
    saved = _check_round_record(store.read_round(key, round, problems=problems), problems)
    participants = _check_saved(ledger, task, round, commit, saved, problems)
    if participants is None:
        participants = [r["client"] for r in records]
    meta = _read_meta(store, commit.meta_hash, task, round, problems)
    if meta is not None:
        problems.extend(check_nodes(store, meta, key, round))
    # The payload digest the round recorded (keccak-256 before bcfl-round/3); unreadable
    # metadata is a finding already, and the payloads are then checked with today's digest.
    hasher = protocol.digest_function(meta["digest"]) if meta else protocol.payload_digest
    rows = _check_payloads(ledger, task, round, store, key, records, participants, problems, hasher)
    checked.append(f"{len(rows)} payloads and signatures")
    leaves = leaves_of(round, records)
    tree = None
    if leaves:
        from .chain import MerkleTree

        tree = MerkleTree.from_leaves(leaves)
        if tree.root != commit.updates_root:
            problems.append(
                f"updates root differs: the stored records give 0x{tree.root.hex()}, "
                f"the chain has 0x{commit.updates_root.hex()}"
            )
    if len(raw) != commit.n:
        problems.append(
            f"number of updates differs: the store has {len(raw)}, the chain has {commit.n}"
        )
    checked.append("updates root")
    _check_stored_result(store, commit.result_digest, problems, hasher)
    complete = len(rows) == len(raw) == len(records) and all(d is not None for d in rows)
    if meta is not None and complete and "keys" in meta and meta.get("dp") is not None:
        from .dp_shares import audit_distributed  # the budget; the result: below, bit for bit

        weights = [r["weight"] for r in records]
        checked += audit_distributed(ledger, store, key, task, round, meta, weights, problems)
    if meta is not None and complete and meta.get("dp") is not None and "keys" not in meta:
        from .round_dp import audit_private

        checked += audit_private(
            ledger, store, key, task, round, meta, rows, commit.result_digest, problems
        )
    elif meta is not None and complete:
        decrypt = None
        if "keys" in meta:
            from .audit_keys import decrypted

            def decrypt(
                payloads: list[bytes], weights: list[int], he_context: bytes
            ) -> bytes | None:
                return decrypted(
                    ledger, task, round, store, meta, payloads, weights, commit.updates_root,
                    he_context, problems, hasher,
                )  # fmt: skip

        if _recompute(store, meta, rows, records, commit.result_digest, problems, hasher, decrypt):
            how = ", decrypted by the parties' stored shares" if "keys" in meta else ""
            checked.append(f"result recomputed with {meta['rule']}{how}")
    if tree is not None:
        rejected = [
            records[i]["client"]
            for i in range(len(leaves))
            if not ledger.verify_inclusion(task, round, leaves[i], tree.proof(i))
        ]
        if rejected:
            problems.append(
                f"the contract rejects the inclusion proof of {len(rejected)} client(s): "
                + ", ".join(rejected)
            )
        checked.append(f"{len(leaves)} inclusion proofs")
    from .audit_quorum import quorum_lines

    checked.extend(quorum_lines(ledger, task, round, problems))
    return AuditReport(task, round, problems, checked)


def _check_records(raw: Sequence[Any], problems: list[str]) -> list[dict[str, Any]]:
    """The well-formed acceptance records in their order; each malformed one is a finding."""
    records = []
    for r in raw:
        try:
            records.append(protocol.check_acceptance(r))
        except PayloadError as exc:
            who = r.get("client") if isinstance(r, dict) else None
            problems.append(f"client {who!r:.60}: {exc}" if isinstance(who, str) else str(exc))
    records.sort(key=lambda r: r["seq"])
    if [r["seq"] for r in records] != list(range(len(records))):
        problems.append(
            f"acceptance records are numbered {[r['seq'] for r in records][:16]}; "
            f"expected 0 .. {len(records) - 1}, each once"
        )
    return records


def _check_round_record(saved: Any, problems: list[str]) -> dict[str, Any] | None:
    if saved is None:
        problems.append("the store's round record (round.json) is missing: participants unknown")
        return None
    try:
        return protocol.check_round_record(saved)
    except PayloadError as exc:
        problems.append(f"the store's round record (round.json) is malformed: {exc}")
        return None


def _check_saved(
    ledger: Any,
    task: int,
    round: int,
    commit: Any,
    saved: dict[str, Any] | None,
    problems: list[str],
) -> list[str] | None:
    """Compare the store's round record with the chain; return its participants if they are
    the task's registered ones."""
    from .chain import MerkleTree, participant_leaf

    if saved is None:
        return None
    held = {
        "task": task,
        "round": round,
        "contract": ledger.address.lower(),
        "root": commit.updates_root.hex(),
        "result_digest": commit.result_digest.hex(),
        "meta_hash": commit.meta_hash.hex(),
        "n": commit.n,
    }
    for k, want in held.items():
        got = saved[k].lower() if k == "contract" else saved[k]
        if got != want:
            name = k.replace("_", " ")
            problems.append(
                f"{name} differs: the store's round record has {_show(saved[k])}, "
                f"the chain has {_show(want)}"
            )
    people = saved["participants"]
    if MerkleTree.from_leaves([participant_leaf(p) for p in people]).root != (
        ledger.task_info(task).participants_root
    ):
        problems.append(
            f"the participants in the store's round record are not those registered for task {task}"
        )
        return None
    return list(people)


def _show(v: Any) -> str:
    return f"0x{v}" if isinstance(v, str) and len(v) == 64 else repr(v)


def _check_payloads(
    ledger: Any,
    task: int,
    round: int,
    store: PayloadStore,
    key: str,
    records: Sequence[dict[str, Any]],
    participants: Sequence[str],
    problems: list[str],
    hasher: Callable[[bytes], bytes],
) -> list[bytes | None]:
    """Each record's payload bytes (None where missing or altered), signatures checked."""
    from .chain import SignedPayload, verify_payload

    rows: list[bytes | None] = []
    for r in records:
        where = f", node {r['node']}, store {r['store']}" if "node" in r else ""
        who = f"client {r['client']} (seq {r['seq']}{where})"
        try:
            data: bytes | None = store.payload(key, round, r["digest"])
        except PayloadError:
            problems.append(f"{who}: payload 0x{r['digest']} is missing from the store")
            data = None
        if data is not None and (got := hasher(data)).hex() != r["digest"]:
            problems.append(
                f"{who}: stored payload altered: it hashes to 0x{got.hex()}, "
                f"accepted digest 0x{r['digest']}"
            )
            data = None
        digest, signature = bytes.fromhex(r["digest"]), bytes.fromhex(r["signature"])
        signed = SignedPayload(task, round, digest, r["client"], signature, r["weight"])
        try:
            verify_payload(
                signed, task=task, round=round, participants=participants, domain=ledger.domain
            )
        except BcflError as exc:
            problems.append(f"{who}: signature check failed: {exc}")
        rows.append(data)
    return rows


def _check_stored_result(
    store: PayloadStore, digest: bytes, problems: list[str], hasher: Callable[[bytes], bytes]
) -> None:
    """The result bytes the store holds under the committed result digest, checked."""
    try:
        data = store.get(digest, verify=False)
    except PayloadError:
        problems.append(f"the committed result 0x{digest.hex()} is missing from the store")
        return
    if (got := hasher(data)) != digest:
        problems.append(
            f"the stored result was altered: it hashes to 0x{got.hex()}, "
            f"the chain has 0x{digest.hex()}"
        )


def _read_meta(
    store: PayloadStore, meta_hash: bytes, task: int, round: int, problems: list[str]
) -> dict[str, Any] | None:
    where = f"committed metadata 0x{meta_hash.hex()}"
    try:
        meta = protocol.check_meta(json.loads(store.get(meta_hash, hasher=protocol.meta_hash)))
    except (PayloadError, ValueError) as exc:
        problems.append(f"{where} cannot be read from the store: {exc}")
        return None
    if (meta["task"], meta["round"]) != (task, round):
        problems.append(
            f"{where} describes task {meta['task']} round {meta['round']}, "
            f"not task {task} round {round}"
        )
        return None
    return meta


def _recompute(
    store: PayloadStore,
    meta: dict[str, Any],
    rows: Sequence[bytes | None],
    records: Sequence[dict[str, Any]],
    committed: bytes,
    problems: list[str],
    hasher: Callable[[bytes], bytes],
    decrypt: Callable[[list[bytes], list[int], bytes], bytes | None] | None = None,
) -> bool:
    """Recompute the result from the payloads (a multiparty round's aggregate then goes
    through ``decrypt``); a difference or a failure is a finding. True if it was recomputed."""
    try:
        ckks = meta["secure"] == "ckks"
        he_context = store.get(meta["he_context"], hasher=hasher) if ckks else None
        if he_context is None:
            inputs: Any = torch.stack([decode_update(bytes(d or b""), meta["dim"]) for d in rows])
        else:
            inputs = list(rows)
        weights = [r["weight"] for r in records]
        if decrypt is not None:  # a multiparty round: redone from the stored shares
            assert he_context is not None
            plain = decrypt(list(inputs), weights, he_context)
            if plain is None:
                return False
            result_bytes = plain
        else:
            _, result_bytes = round_aggregate(meta, inputs, weights, he_context)
    except BackendUnavailable as exc:  # e.g. a GPU round audited on a CPU-only machine
        problems.append(f"cannot recompute the result here: {exc}")
        return False
    except Exception as exc:  # the metadata and payloads are untrusted input to the rules:
        # whatever they make the computation raise is a finding, not a crash.
        problems.append(
            f"the result cannot be recomputed from the stored payloads and metadata "
            f"({meta['rule']}, backend {meta['backend']}): {type(exc).__name__}: {exc}"
        )
        return False
    got = hasher(result_bytes)
    if got != committed:
        problems.append(
            f"result digest differs: recomputed 0x{got.hex()} from the stored payloads "
            f"({meta['rule']}, backend {meta['backend']}), the chain has 0x{committed.hex()}"
        )
    return True
