"""The round log: groups appended with one fsync, read back whole, a torn tail dropped, damage
named, a stale writer refused."""

from __future__ import annotations

import os

import pytest

from bcfl_engine import protocol
from bcfl_engine.errors import InvalidArgument, PayloadError
from bcfl_engine.round_log import RoundLog


def entry(i: int, size: int = 100) -> tuple[dict, bytes]:
    data = bytes([i % 256]) * size + i.to_bytes(4, "little")
    return {"seq": i, "client": f"0x{i:040x}", "digest": protocol.payload_digest(data).hex()}, data


def append(log: RoundLog, entries: list[tuple[dict, bytes]]) -> None:
    log.append([r for r, _ in entries], [p for _, p in entries])


def test_groups_round_trip_with_one_fsync_each(tmp_path, monkeypatch):
    syncs = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: syncs.append(fd) or real(fd))
    log = RoundLog(tmp_path / "r" / "accepted.log")
    groups = [[entry(i) for i in range(5)], [entry(5)], [entry(i) for i in range(6, 1200)]]
    for g in groups:
        append(log, g)
    assert len(syncs) == 3  # one per group, however many payloads
    every = [e for g in groups for e in g]
    for reader in (log, RoundLog(log.path, readonly=True), RoundLog(log.path)):
        assert reader.records == [r for r, _ in every]
        for r, data in every[::97]:
            assert reader.payload(r["digest"], hasher=protocol.payload_digest) == data
    assert log.path.stat().st_size == log.end


def test_an_empty_payload_and_memoryviews_are_stored(tmp_path):
    log = RoundLog(tmp_path / "l")
    data = bytearray(b"view bytes")
    digests = [protocol.payload_digest(b"").hex(), protocol.payload_digest(data).hex()]
    log.append([{"digest": d} for d in digests], [b"", memoryview(data)])
    again = RoundLog(tmp_path / "l", readonly=True)
    assert again.payload(digests[0]) == b"" and again.payload(digests[1]) == bytes(data)


@pytest.mark.parametrize("cut", ["prefix", "head", "body", "check", "last-byte"])
def test_a_torn_last_group_is_dropped_and_the_log_goes_on(tmp_path, cut):
    path = tmp_path / "l"
    log = RoundLog(path)
    append(log, [entry(0), entry(1)])
    kept = path.stat().st_size
    append(log, [entry(2, 5000), entry(3)])
    full = path.stat().st_size
    at = {
        "prefix": kept + 7,
        "head": kept + 40,
        "body": kept + 2000,
        "check": full - 20,
        "last-byte": full - 1,
    }[cut]
    os.truncate(path, at)
    reader = RoundLog(path, readonly=True)  # ignores it, repairs nothing
    assert [r["seq"] for r in reader.records] == [0, 1] and reader.dropped == at - kept
    assert path.stat().st_size == at
    writer = RoundLog(path)  # drops it
    assert [r["seq"] for r in writer.records] == [0, 1] and path.stat().st_size == kept
    append(writer, [entry(2), entry(3)])
    assert [r["seq"] for r in RoundLog(path, readonly=True).records] == [0, 1, 2, 3]


def test_a_power_loss_tail_of_zeros_or_unsynced_payloads_is_dropped(tmp_path):
    path = tmp_path / "l"
    log = RoundLog(path)
    append(log, [entry(0)])
    kept = path.stat().st_size
    with open(path, "ab") as fh:
        fh.write(bytes(300))  # zeros where an unsynced group's blocks never reached the disk
    assert RoundLog(path).records == log.records and path.stat().st_size == kept
    append(RoundLog(path), [entry(1, 4000)])
    raw = bytearray(path.read_bytes())
    raw[kept + 500] ^= 0xFF  # the last group's records are whole, one payload is not
    path.write_bytes(bytes(raw))
    reader = RoundLog(path, readonly=True)  # kept for the audit, which names the payload
    assert len(reader.records) == 2
    with pytest.raises(PayloadError, match="altered"):
        reader.payload(reader.records[1]["digest"], hasher=protocol.payload_digest)
    with pytest.warns(RuntimeWarning, match=r"dropped its last group \(1 payloads"):
        assert [r["seq"] for r in RoundLog(path).records] == [0]  # a writer drops it
    assert path.stat().st_size == kept


def test_damage_before_the_last_group_is_named_never_repaired(tmp_path):
    path = tmp_path / "l"
    log = RoundLog(path)
    append(log, [entry(0), entry(1)])
    append(log, [entry(2)])
    append(log, [entry(3)])
    second = log.frames[1].offset
    raw = bytearray(path.read_bytes())
    raw[second + 30] ^= 0x01  # a byte of the second group's records: its check fails
    path.write_bytes(bytes(raw))
    reader = RoundLog(path, readonly=True)
    assert [r["seq"] for r in reader.records] == [0, 1]
    assert len(reader.problems) == 1 and f"byte {second}" in reader.problems[0]
    with pytest.raises(PayloadError, match=f"byte {second} is damaged"):
        RoundLog(path)
    assert path.read_bytes() == bytes(raw)  # nothing cut


def test_bad_magic_in_the_middle_is_damage(tmp_path):
    path = tmp_path / "l"
    log = RoundLog(path)
    append(log, [entry(0)])
    append(log, [entry(1)])
    raw = bytearray(path.read_bytes())
    raw[log.frames[1].offset] ^= 0x01
    path.write_bytes(bytes(raw))
    with pytest.raises(PayloadError, match="damaged"):
        RoundLog(path)
    assert "bad magic" in RoundLog(path, readonly=True).problems[0]


def test_a_stale_writer_is_refused_and_writes_nothing(tmp_path):
    path = tmp_path / "l"
    first, second = RoundLog(path), RoundLog(path)
    append(first, [entry(0)])
    size = path.stat().st_size
    with pytest.raises(PayloadError, match="another process appended"):
        append(second, [entry(1)])
    assert path.stat().st_size == size
    assert [r["seq"] for r in RoundLog(path).records] == [0]


def test_a_failed_write_leaves_nothing_behind(tmp_path, monkeypatch):
    path = tmp_path / "l"
    log = RoundLog(path)
    append(log, [entry(0)])
    size = path.stat().st_size
    real = os.pwritev

    def half_then_fail(fd, buffers, offset):
        real(fd, [bytes(buffers[0])[:10]], offset)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "pwritev", half_then_fail)
    with pytest.raises(OSError, match="No space"):
        append(log, [entry(1)])
    monkeypatch.undo()
    assert path.stat().st_size == size
    append(log, [entry(2)])  # the writer goes on where it was
    assert [r["seq"] for r in RoundLog(path, readonly=True).records] == [0, 2]


def test_bad_groups_and_read_only_writes_are_refused(tmp_path):
    log = RoundLog(tmp_path / "l")
    with pytest.raises(InvalidArgument, match="one payload each"):
        log.append([{}], [])
    with pytest.raises(InvalidArgument, match="one payload each"):
        log.append([], [])
    with pytest.raises(InvalidArgument, match="read-only"):
        RoundLog(tmp_path / "l", readonly=True).append([{}], [b""])
    assert not (tmp_path / "l").exists()
    with pytest.raises(PayloadError, match="not in the round log"):
        log.payload("00" * 32)


def test_a_record_that_is_not_an_object_is_kept_for_the_audit(tmp_path):
    log = RoundLog(tmp_path / "l")
    log.append(["not a record", {"seq": 1}], [b"a", b"b"])
    assert RoundLog(tmp_path / "l", readonly=True).records == ["not a record", {"seq": 1}]


def test_create_makes_an_empty_log_and_syncs_every_new_folder(tmp_path, monkeypatch):
    synced = []
    from bcfl_engine import round_log

    real = round_log._fsync_dir
    monkeypatch.setattr(round_log, "_fsync_dir", lambda p: synced.append(p) or real(p))
    log = RoundLog(tmp_path / "task" / "1" / "accepted.log")
    log.create()
    assert log.path.stat().st_size == 0 and RoundLog(log.path, readonly=True).records == []
    assert set(synced) == {tmp_path / "task" / "1", tmp_path / "task", tmp_path}
    synced.clear()
    log.create()  # there already: nothing
    append(log, [entry(0)])
    assert synced == []  # the first group syncs its bytes only
    with pytest.raises(InvalidArgument, match="read-only"):
        RoundLog(tmp_path / "x", readonly=True).create()
