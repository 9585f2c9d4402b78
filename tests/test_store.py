"""The content-addressed payload store: digests, atomic writes, round records, tampering."""

from __future__ import annotations

import os

import pytest

from bcfl_engine.errors import InvalidArgument, PayloadError
from bcfl_engine.store import PayloadStore, atomic_write
from bcfl_engine.updates import keccak256


def test_put_get_by_keccak_digest(tmp_path):
    store = PayloadStore(tmp_path)
    data = bytes(range(256)) * 3
    digest = store.put(data)
    assert digest == keccak256(data)
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


def test_put_repairs_an_altered_copy(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"payload")
    store.path(digest).write_bytes(b"tampered")
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


def test_temporaries_left_by_a_crash_are_removed_on_open(tmp_path):
    store = PayloadStore(tmp_path)
    digest = store.put(b"kept")
    leftover = store.path(digest).parent / ".tmp-abc123"
    leftover.write_bytes(b"half a payl")
    PayloadStore(tmp_path)
    assert not leftover.exists()
    assert store.get(digest) == b"kept"


def test_acceptance_records_round_trip_sorted_by_client(tmp_path):
    store = PayloadStore(tmp_path)
    assert store.accepted(7, 1) == []
    for client, seq in [("0xbb", 0), ("0xaa", 1), ("0xcc", 2)]:
        store.accept(7, 1, client, {"client": client, "seq": seq})
    store.accept(7, 2, "0xaa", {"client": "0xaa", "seq": 0})
    assert [r["client"] for r in store.accepted(7, 1)] == ["0xaa", "0xbb", "0xcc"]
    assert len(store.accepted(7, 2)) == 1
    assert store.read_round(7, 1) is None
    store.write_round(7, 1, {"root": "ab"})
    assert store.read_round(7, 1) == {"root": "ab"}


@pytest.mark.parametrize(
    "task", ["..", "a/b", "", "x" * 129], ids=["dotdot", "slash", "empty", "long"]
)
def test_names_that_could_escape_the_store_are_rejected(tmp_path, task):
    with pytest.raises(InvalidArgument, match="task"):
        PayloadStore(tmp_path).accept(task, 1, "0xaa", {})


def test_unreadable_record_is_a_payload_error(tmp_path):
    store = PayloadStore(tmp_path)
    store.accept(1, 1, "0xaa", {"client": "0xaa"})
    (store.round_dir(1, 1) / "accepted" / "0xaa.json").write_text("{not json")
    with pytest.raises(PayloadError, match="unreadable"):
        store.accepted(1, 1)
