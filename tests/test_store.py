"""The content-addressed payload store: digests, atomic writes, round records, tampering."""

from __future__ import annotations

import json
import os
import time

import pytest

from bcfl_engine import protocol
from bcfl_engine.errors import InvalidArgument, PayloadError
from bcfl_engine.store import STALE_TMP_SECONDS, PayloadStore, atomic_write
from bcfl_engine.updates import keccak256


def test_put_get_by_payload_digest(tmp_path):
    from blake3 import blake3

    store = PayloadStore(tmp_path)
    data = bytes(range(256)) * 3
    digest = store.put(data)
    assert digest == blake3(data).digest() != keccak256(data)
    assert store.has(digest) and store.has(digest.hex()) and store.has("0x" + digest.hex())
    assert store.get(digest) == data
    assert store.path(digest).parent.name == digest.hex()[:2]


def test_put_is_idempotent_and_empty_payload_is_storable(tmp_path):
    store = PayloadStore(tmp_path)
    d1 = store.put(b"same")
    mtime = store.path(d1).stat().st_mtime_ns
    assert store.put(b"same") == d1
    assert store.path(d1).stat().st_mtime_ns == mtime  # not rewritten
    assert store.get(store.put(b"")) == b""


def test_put_repairs_a_truncated_copy(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"payload")
    store.path(digest).write_bytes(b"payl")
    store.put(b"payload")
    assert store.get(digest) == b"payload"


def test_get_detects_altered_and_missing_payloads(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"honest update")
    store.path(digest).write_bytes(b"honest updatE")
    with pytest.raises(PayloadError, match="altered"):
        store.get(digest)
    assert store.get(digest, verify=False) == b"honest updatE"
    with pytest.raises(PayloadError, match="not in the store"):
        store.get(bytes(32))


@pytest.mark.parametrize(
    "bad", [b"short", "0x1234", "zz" * 32, 5], ids=["bytes5", "hex4", "nonhex", "int"]
)
def test_bad_digests_are_rejected(tmp_path, bad):
    with pytest.raises(InvalidArgument, match="digest"):
        PayloadStore(tmp_path).get(bad)


def test_a_failed_write_leaves_no_file_and_no_temporary(tmp_path, monkeypatch):
    target = tmp_path / "sub" / "file"

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="disk full"):
        atomic_write(target, b"x" * 100)
    assert not target.exists()
    assert list(target.parent.iterdir()) == []


def test_only_stale_temporaries_are_removed_on_open(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"kept")
    stale = store.path(digest).parent / ".tmp-abc123"
    stale.write_bytes(b"half a payl")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(stale, (old, old))
    in_flight = store.path(digest).parent / ".tmp-def456"  # another writer's, being written
    in_flight.write_bytes(b"half a paylo")
    PayloadStore(tmp_path)
    assert not stale.exists()
    assert in_flight.exists()
    assert store.get(digest) == b"kept"


def test_a_read_only_store_creates_changes_and_deletes_nothing(tmp_path):
    missing = tmp_path / "nowhere"
    ro = PayloadStore(missing, readonly=True)
    assert ro.accepted(1, 1) == [] and ro.read_round(1, 1) is None
    assert not missing.exists()
    store = PayloadStore(tmp_path / "s")
    digest = store.put(b"kept")
    store.append(7, 1, [{"client": "0xaa"}], [b"payload"])
    leftover = store.path(digest).parent / ".tmp-abc123"
    leftover.write_bytes(b"half")
    old = time.time() - STALE_TMP_SECONDS - 60
    os.utime(leftover, (old, old))
    before = sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "s").rglob("*"))
    ro = PayloadStore(tmp_path / "s", readonly=True)
    assert ro.get(digest) == b"kept" and ro.accepted(7, 1) == [{"client": "0xaa"}]
    for write in (
        lambda: ro.put(b"new"),
        lambda: ro.append(7, 1, [{}], [b""]),
        lambda: ro.write_round(7, 1, {}),
        lambda: ro.sweep(),
    ):
        with pytest.raises(InvalidArgument, match="read-only"):
            write()
    assert sorted((p, p.stat().st_mtime_ns) for p in (tmp_path / "s").rglob("*")) == before


def test_put_with_a_known_digest_does_not_hash_again(tmp_path, monkeypatch):
    from bcfl_engine import protocol

    store = PayloadStore(tmp_path)
    data = b"payload bytes"
    digest = protocol.payload_digest(data)
    calls = []
    real = protocol.payload_digest
    monkeypatch.setattr(protocol, "payload_digest", lambda d: calls.append(d) or real(d))
    assert store.put(data, digest=digest) == digest
    assert store.put(data, digest=digest) == digest  # present: not read back, not hashed
    assert calls == []
    assert store.get(digest) == data and len(calls) == 1  # get verifies: one hash


def test_acceptance_records_round_trip_in_the_order_written(tmp_path):
    store = PayloadStore(tmp_path)
    assert store.accepted(7, 1) == []
    store.append(7, 1, [{"client": "0xbb", "seq": 0}], [b"b"])
    store.append(7, 1, [{"client": "0xaa", "seq": 1}, {"client": "0xcc", "seq": 2}], [b"a", b"c"])
    store.append(7, 2, [{"client": "0xaa", "seq": 0}], [b"a2"])
    assert [r["client"] for r in store.accepted(7, 1)] == ["0xbb", "0xaa", "0xcc"]
    assert [r["client"] for r in PayloadStore(tmp_path).accepted(7, 1)] == ["0xbb", "0xaa", "0xcc"]
    assert len(store.accepted(7, 2)) == 1
    assert store.read_round(7, 1) is None
    store.write_round(7, 1, {"root": "ab"})
    assert store.read_round(7, 1) == {"root": "ab"}


@pytest.mark.parametrize(
    "task", ["..", "a/b", "", "x" * 129], ids=["dotdot", "slash", "empty", "long"]
)
def test_names_that_could_escape_the_store_are_rejected(tmp_path, task):
    with pytest.raises(InvalidArgument, match="task"):
        PayloadStore(tmp_path).append(task, 1, [{}], [b""])


def legacy_accept(store: PayloadStore, task: int, round: int, client: str, record: dict) -> None:
    """A record as a store written before the round log kept it: one file per client."""
    atomic_write(
        store.round_dir(task, round) / "accepted" / f"{client}.json", json.dumps(record).encode()
    )


def test_a_store_written_before_the_log_is_still_read(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"old payload")
    legacy_accept(store, 1, 1, "0xaa", {"client": "0xaa", "digest": digest.hex()})
    new = protocol.payload_digest(b"new")
    store.append(1, 1, [{"client": "0xbb", "digest": new.hex()}], [b"new"])
    ro = PayloadStore(tmp_path, readonly=True)
    assert [r["client"] for r in ro.accepted(1, 1)] == ["0xaa", "0xbb"]
    assert ro.payload(1, 1, digest) == b"old payload"
    assert ro.payload(1, 1, new, hasher=protocol.payload_digest) == b"new"
    with pytest.raises(PayloadError, match="not in the store"):
        ro.payload(1, 1, "11" * 32)


def test_unreadable_record_is_a_payload_error(tmp_path):
    store = PayloadStore(tmp_path)
    legacy_accept(store, 1, 1, "0xaa", {"client": "0xaa"})
    (store.round_dir(1, 1) / "accepted" / "0xaa.json").write_text("{not json")
    with pytest.raises(PayloadError, match="unreadable"):
        store.accepted(1, 1)


def test_unreadable_records_can_be_collected_as_problems(tmp_path):
    store = PayloadStore(tmp_path)
    legacy_accept(store, 1, 1, "0xaa", {"client": "0xaa"})
    legacy_accept(store, 1, 1, "0xbb", {"client": "0xbb"})
    (store.round_dir(1, 1) / "accepted" / "0xaa.json").write_text("{not json")
    (store.round_dir(1, 1) / "round.json").write_text(json.dumps([1, 2]))
    problems: list[str] = []
    assert store.accepted(1, 1, problems=problems) == [{"client": "0xbb"}]
    assert store.read_round(1, 1, problems=problems) is None
    assert len(problems) == 2 and "0xaa.json" in problems[0] and "JSON object" in problems[1]
    with pytest.raises(PayloadError, match="unreadable round record"):
        store.read_round(1, 1)


def test_a_task_id_names_its_latest_run(tmp_path):
    store = PayloadStore(tmp_path)
    first, second = "3-1-" + "ab" * 20 + "-" + "01" * 8, "3-1-" + "ab" * 20 + "-" + "02" * 8
    store.write_round(first, 1, {"run": 1})
    old = time.time() - 100
    os.utime(store.root / "rounds" / first, (old, old))
    store.write_round(second, 1, {"run": 2})
    assert store.read_round(first, 1) == {"run": 1}
    assert store.read_round(3, 1) == {"run": 2}  # the id alone: the latest run
    assert store.read_round("3", 1) is None  # a name is taken as is
    store.write_round(3, 1, {"run": 0})  # a folder of the plain id wins
    assert store.read_round(3, 1) == {"run": 0}


def test_get_verifies_with_the_hash_it_is_given(tmp_path):
    # The metadata is named by keccak-256 (protocol.meta_hash), payloads by BLAKE3.
    from bcfl_engine import protocol

    store = PayloadStore(tmp_path)
    meta = b'{"format":"bcfl-round/3"}'
    name = store.put(meta, digest=protocol.meta_hash(meta))
    assert name == keccak256(meta) and store.get(name, hasher=protocol.meta_hash) == meta
    with pytest.raises(PayloadError, match="altered"):
        store.get(name)  # its BLAKE3 is another name
    store.path(name).write_bytes(meta + b" ")
    with pytest.raises(PayloadError, match="altered"):
        store.get(name, hasher=protocol.meta_hash)
