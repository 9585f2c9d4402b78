"""The audit against a corrupted store and a lying aggregator: every malformed or altered
record, payload, result or metadata is a finding (report not ok), never an exception.

One honest round is committed once; each case audits a copy of its store with one thing
corrupted. Metadata is committed on chain by hash, so a corrupted metadata file is caught by
its hash; metadata an aggregator committed malformed is made by corrupting it before the
commit.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import time
from pathlib import Path

import pytest
from helpers import make_updates
from store_tools import edit_log, flip_payload_byte, log_path, replace_payload

from bcfl_engine import protocol
from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 3, 5
KEYS = [keccak256(f"fuzz hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
OTHER = "0x" + "11" * 20
DROP = object()  # a case that deletes the field


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def committed_round(ledger, store, rule="median"):
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"f")
    rnd = AggregationRound(ledger, task, 1, store, participants=ADDRESSES, dim=D, rule=rule)
    x = make_updates(N, D, seed=task)
    for i in range(N):
        rnd.submit(sign_payload(KEYS[i], task, 1, encode_update(x[i]), ledger.domain, i + 1))
    return task, rnd.key, rnd.finalize()


@pytest.fixture(scope="module")
def honest(ledger, tmp_path_factory):
    root = tmp_path_factory.mktemp("honest")
    task, key, res = committed_round(ledger, root)
    report = audit(ledger, task, 1, root)
    assert report.ok, report.summary()
    return root, task, key, res


def corrupted_copy(honest, tmp_path) -> tuple[Path, int, str, PayloadStore]:
    root, task, key, _ = honest
    shutil.copytree(root, tmp_path / "s")
    return tmp_path / "s", task, key, PayloadStore(tmp_path / "s")


def edited(record: dict, key: str, value: object) -> dict:
    record = dict(record)
    if value is DROP:
        del record[key]
    else:
        record[key] = value
    return record


def edit_json(path: Path, key: str, value: object) -> None:
    path.write_text(json.dumps(edited(json.loads(path.read_text()), key, value)))


def assert_finding(ledger, task, root, *words):
    report = audit(ledger, task, 1, root)  # must not raise
    assert not report.ok, f"no finding: {report.summary()}"
    for w in words:
        assert w in report.summary(), report.summary()
    return report


BAD_TYPES = [DROP, None, [], "zz", {"x": 1}, 2**1100]

ACCEPTANCE_CASES = {
    "seq": [*BAD_TYPES, -1, 7, 0, 1.0, True],
    "client": [*BAD_TYPES, OTHER, ADDRESSES[0].lower(), ADDRESSES[1]],
    "digest": [*BAD_TYPES, "00" * 32, "0x" + "00" * 32],
    "weight": [*BAD_TYPES, 0, -2, 1, 3, 2**64, 2**256, 2.0, True, "2"],
    "salt": [*BAD_TYPES, "00" * 32, "00" * 31],
    "signature": [*BAD_TYPES, "00" * 65, "11" * 64],
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, vs in ACCEPTANCE_CASES.items() for v in vs],
    ids=[
        f"{f}={'drop' if v is DROP else repr(v)[:12]}"
        for f, vs in ACCEPTANCE_CASES.items()
        for v in vs
    ],
)
def test_a_corrupted_acceptance_record_is_a_finding(ledger, honest, tmp_path, field, value):
    root, task, key, store = corrupted_copy(honest, tmp_path)
    victim = sorted(store.accepted(key, 1), key=lambda r: r["seq"])[1]  # weight 2, seq 1
    # The attacker rewrites the log with fresh group checks: the record's content is the finding.
    edit_log(
        store,
        key,
        1,
        lambda entries: [(edited(r, field, value) if r == victim else r, p) for r, p in entries],
    )
    assert_finding(ledger, task, root)


ROUND_CASES = {
    "task": [*BAD_TYPES, -1, 10**6],
    "round": [*BAD_TYPES, 0, 2],
    "contract": [*BAD_TYPES, OTHER],
    "root": [*BAD_TYPES, "00" * 32],
    "result_digest": [*BAD_TYPES, "00" * 32],
    "meta_hash": [*BAD_TYPES, "00" * 32],
    "n": [*BAD_TYPES, 0, 2, 4],
    "participants": [*BAD_TYPES, [OTHER], ADDRESSES[::-1], ADDRESSES[:2], [1, 2, 3]],
    "gas_used": [None, "zz", -1, [], 1.5],
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, vs in ROUND_CASES.items() for v in vs],
    ids=[
        f"{f}={'drop' if v is DROP else repr(v)[:12]}" for f, vs in ROUND_CASES.items() for v in vs
    ],
)
def test_a_corrupted_round_record_is_a_finding(ledger, honest, tmp_path, field, value):
    root, task, key, store = corrupted_copy(honest, tmp_path)
    edit_json(store.round_dir(key, 1) / "round.json", field, value)
    assert_finding(ledger, task, root, "round record")


FILE_CASES = ["not-json", "a-list", "empty-object", "deleted", "empty-file"]
FILES = [("acceptance", c) for c in [*FILE_CASES, "extra-copy", "garbled-group"]] + [
    ("round", c) for c in FILE_CASES
]


@pytest.mark.parametrize(("kind", "case"), FILES, ids=[f"{k}-{c}" for k, c in FILES])
def test_an_unreadable_record_file_is_a_finding(ledger, honest, tmp_path, kind, case):
    root, task, key, store = corrupted_copy(honest, tmp_path)
    folder = store.round_dir(key, 1)
    if kind == "acceptance":
        # Records live in the round's log: each case rewrites it (fresh checks) or breaks it.
        first = {"not-json": "{not json", "a-list": [1, 2], "empty-object": {}}.get(case)
        path = log_path(store, key, 1)
        if case == "deleted":
            path.unlink()
        elif case == "empty-file":
            path.write_bytes(b"")
        elif case == "garbled-group":  # a byte of the first group's records, its check stale
            raw = bytearray(path.read_bytes())
            raw[30] ^= 0x20
            path.write_bytes(bytes(raw))
        elif case == "extra-copy":
            edit_log(store, key, 1, lambda entries: [*entries, entries[0]])
        else:
            edit_log(store, key, 1, lambda entries: [(first, entries[0][1]), *entries[1:]])
        assert_finding(ledger, task, root)
        return
    path = folder / "round.json"
    if case == "not-json":
        path.write_text("{not json")
    elif case == "a-list":
        path.write_text("[1, 2]")
    elif case == "empty-object":
        path.write_text("{}")
    elif case == "deleted":
        path.unlink()
    else:
        path.write_bytes(b"")
    assert_finding(ledger, task, root)


@pytest.mark.parametrize("what", ["payload", "result", "meta"])
@pytest.mark.parametrize("how", ["altered", "deleted", "truncated"])
def test_an_altered_or_missing_object_is_a_finding(ledger, honest, tmp_path, what, how):
    root, task, key, store = corrupted_copy(honest, tmp_path)
    res = honest[3]
    digest = {
        "payload": bytes.fromhex(store.accepted(key, 1)[0]["digest"]),
        "result": res.result_digest,
        "meta": res.meta_hash,
    }[what]
    if what == "payload":
        if how == "deleted":  # its record and bytes cut out of the log
            edit_log(store, key, 1, lambda entries: entries[1:])
            assert_finding(ledger, task, root, "number of updates differs")
        elif how == "truncated":
            replace_payload(store, key, 1, digest.hex(), lambda p: p[:-1])
            assert_finding(ledger, task, root, "0x" + digest.hex())
        else:
            flip_payload_byte(store, key, 1, digest.hex(), at=-1)
            assert_finding(ledger, task, root, "0x" + digest.hex())
        return
    path = store.path(digest)
    raw = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(raw[:-1])
    else:
        path.write_bytes(raw[:-1] + bytes([raw[-1] ^ 1]))
    assert_finding(ledger, task, root, "0x" + digest.hex())


def test_random_byte_corruption_of_records_never_raises(ledger, honest, tmp_path):
    root, task, key, store = corrupted_copy(honest, tmp_path)
    rng = random.Random(1234)
    paths = [log_path(store, key, 1), store.round_dir(key, 1) / "round.json"]
    originals = {p: p.read_bytes() for p in paths}
    found = 0
    for _ in range(40):
        path = rng.choice(paths)
        raw = bytearray(originals[path])
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(len(raw))
            raw[i] = rng.choice(b'{}[]":,0123456789abcdefx -\\\n\x00\xff')
        path.write_bytes(bytes(raw))
        found += not audit(ledger, task, 1, root).ok  # must not raise
        path.write_bytes(originals[path])
    assert found >= 30  # most single-byte edits are caught; a few only touch whitespace
    assert audit(ledger, task, 1, root).ok


META_CASES = {  # each case commits a round: a few per field
    "format": [DROP, "bcfl-round/1"],
    "digest": ["blake3"],
    "signed": ["Payload(uint256 task,uint256 round,bytes32 digest)"],
    "task": ["1"],
    "round": [2],
    "secure": ["ckks", "paillier"],
    "rule": [DROP, 5, "mean"],
    "f": [-1, 2],  # median with f=2 needs 5 clients
    "params": [[], {"no_such_argument": 1}],
    "pre": ["clip", [5]],
    "backend": ["gpu9000"],
    "dim": [0, D + 1, None],
}


@pytest.mark.parametrize(
    ("field", "value"),
    [(f, v) for f, vs in META_CASES.items() for v in vs],
    ids=[
        f"{f}={'drop' if v is DROP else repr(v)[:16]}" for f, vs in META_CASES.items() for v in vs
    ],
)
def test_metadata_committed_malformed_is_a_finding(ledger, tmp_path, monkeypatch, field, value):
    honest_encode = protocol.encode_meta

    def lying(meta):
        meta = dict(meta)
        if value is DROP:
            del meta[field]
        else:
            meta[field] = value
        return honest_encode(meta)

    monkeypatch.setattr(protocol, "encode_meta", lying)
    task, _, _ = committed_round(ledger, tmp_path)
    monkeypatch.undo()
    assert_finding(
        ledger, task, tmp_path, "metadata" if field != "rule" or value != "mean" else "differs"
    )


def test_the_audit_leaves_the_store_as_it_was(ledger, honest, tmp_path):
    root, task, _, _ = corrupted_copy(honest, tmp_path)
    stale = root / "objects" / ".tmp-left-by-a-crash"
    stale.write_bytes(b"x")
    os.utime(stale, (time.time() - 10**6, time.time() - 10**6))
    before = sorted(
        (p, p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()
    )
    assert audit(ledger, task, 1, root).ok
    after = sorted(
        (p, p.stat().st_mtime_ns, p.read_bytes()) for p in root.rglob("*") if p.is_file()
    )
    assert after == before
