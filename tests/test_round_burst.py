"""AggregationRound.submit_many: a burst checked at once, written as one group with one fsync,
each payload answered on its own; the same round as one submit at a time."""

from __future__ import annotations

import dataclasses
import os

import pytest
import torch
from helpers import assert_close, make_updates

from bcfl_engine import rules
from bcfl_engine.chain.errors import BadSignature, NotParticipant
from bcfl_engine.errors import (
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
    PayloadError,
    ShapeMismatch,
)
from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 7, 11
KEYS = [keccak256(f"burst hospital {i}".encode()) for i in range(N + 1)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_task(ledger) -> int:
    return ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES[:N], model_spec=b"b")


def signed(ledger, task, i, vector, round=1, salt=True):
    p = sign_payload(KEYS[i], task, round, encode_update(vector), ledger.domain, weight=i + 1)
    return dataclasses.replace(p, salt=keccak256(b"salt%d" % i)) if salt else p


def make_round(ledger, task, store, **kw):
    return AggregationRound(ledger, task, 1, store, participants=ADDRESSES[:N], dim=D, **kw)


def count_syncs(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = os.fdatasync
    monkeypatch.setattr(os, "fdatasync", lambda fd: calls.append(fd) or real(fd))
    return calls


def test_a_burst_commits_what_one_at_a_time_commits_with_one_fsync(ledger, tmp_path, monkeypatch):
    x = make_updates(N, D, seed=3)
    one_task, burst_task = new_task(ledger), new_task(ledger)
    one = make_round(ledger, one_task, tmp_path / "one", rule="median", f=1)
    for i in range(N):
        one.submit(signed(ledger, one_task, i, x[i]))
    burst = make_round(ledger, burst_task, tmp_path / "burst", rule="median", f=1)
    syncs = count_syncs(monkeypatch)
    records = burst.submit_many([signed(ledger, burst_task, i, x[i]) for i in range(N)])
    assert len(syncs) == 1
    assert all(isinstance(r, dict) for r in records) and [r["seq"] for r in records] == list(
        range(N)
    )
    monkeypatch.undo()
    a, b = one.finalize(), burst.finalize()
    assert a.root == b.root and a.result_digest == b.result_digest
    assert_close(b.update, rules.get("median").reference(x, f=1), 0, 0)
    assert audit(ledger, burst_task, 1, tmp_path / "burst").ok


def test_each_bad_payload_of_a_burst_rejects_only_itself(ledger, tmp_path):
    task = new_task(ledger)
    x = make_updates(N, D, seed=4)
    nan = x[3].clone()
    nan[5] = float("nan")
    good = [signed(ledger, task, i, x[i]) for i in range(N)]
    burst = [
        good[0],
        dataclasses.replace(good[1], weight=99),  # not the signed weight
        signed(ledger, task, 2, torch.zeros(D + 1)),  # wrong size
        signed(ledger, task, 3, nan),  # NaN, between good rows
        good[4],
        signed(ledger, task, N, x[0]),  # not a participant
        good[0],  # the same payload again: the same record
        signed(ledger, task, 0, x[1]),  # client 0 again, another payload
        signed(ledger, task, 5, x[5], round=2),  # signed for another round: another signer
        "not a payload",
        good[6],
    ]
    rnd = make_round(ledger, task, tmp_path)
    out = rnd.submit_many(burst)
    kinds = [type(r) if not isinstance(r, dict) else dict for r in out]
    assert kinds == [
        dict,
        BadSignature,
        ShapeMismatch,
        NonFiniteUpdate,
        dict,
        NotParticipant,
        dict,
        DuplicateClient,
        BadSignature,
        InvalidArgument,
        dict,
    ]
    assert out[6] is out[0]
    assert "client" in str(out[3]) and ADDRESSES[3].lower() in str(out[3])
    assert rnd.clients == [ADDRESSES[i].lower() for i in (0, 4, 6)]
    stored = PayloadStore(tmp_path).accepted(rnd.key, 1)
    assert [r["client"] for r in stored] == rnd.clients
    # The rejected ones can come again, right this time, in a later burst.
    later = rnd.submit_many([good[1], good[2], good[3], good[5]])
    assert all(isinstance(r, dict) for r in later)
    res = rnd.finalize()
    order = [0, 4, 6, 1, 2, 3, 5]
    w = torch.tensor([i + 1 for i in order], dtype=torch.float64)
    expected = rules.get("mean").reference(x[order], weights=w)
    assert_close(res.update, expected, 1e-6, 1e-6)
    assert audit(ledger, task, 1, tmp_path).ok


def test_a_failed_group_write_accepts_none_and_changes_nothing(ledger, tmp_path, monkeypatch):
    task = new_task(ledger)
    x = make_updates(N, D, seed=5)
    ps = [signed(ledger, task, i, x[i]) for i in range(N)]
    rnd = make_round(ledger, task, tmp_path)
    rnd.submit_many(ps[:2])

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fdatasync", full)
    with pytest.raises(OSError, match="No space"):
        rnd.submit_many(ps[2:])
    monkeypatch.undo()
    assert len(rnd) == 2 and len(PayloadStore(tmp_path).accepted(rnd.key, 1)) == 2
    assert all(isinstance(r, dict) for r in rnd.submit_many(ps))  # retried: all in
    assert len(rnd) == N
    assert make_round(ledger, task, tmp_path).finalize().root == rnd.finalize().root


def test_a_committed_round_refuses_a_burst(ledger, tmp_path):
    task = new_task(ledger)
    x = make_updates(N, D, seed=6)
    rnd = make_round(ledger, task, tmp_path)
    rnd.submit_many([signed(ledger, task, i, x[i]) for i in range(3)])
    rnd.finalize()
    late = rnd.submit_many([signed(ledger, task, 4, x[4]), signed(ledger, task, 5, x[5])])
    assert [type(r) for r in late] == [PayloadError, PayloadError]
    assert "already committed" in str(late[0]) and len(rnd) == 3
    with pytest.raises(PayloadError, match="already committed"):
        rnd.submit(signed(ledger, task, 4, x[4]))


def test_an_empty_burst_writes_nothing(ledger, tmp_path, monkeypatch):
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path)
    syncs = count_syncs(monkeypatch)
    assert rnd.submit_many([]) == []
    bad = rnd.submit_many([signed(ledger, task, N, make_updates(1, D)[0])])
    assert isinstance(bad[0], NotParticipant) and syncs == [] and len(rnd) == 0


def test_a_restarted_round_reads_back_every_group(ledger, tmp_path):
    task = new_task(ledger)
    x = make_updates(N, D, seed=7)
    ps = [signed(ledger, task, i, x[i]) for i in range(N)]
    first = make_round(ledger, task, tmp_path, rule="trimmed_mean", f=1)
    first.submit_many(ps[:3])
    first.submit(ps[3])
    resumed = make_round(ledger, task, tmp_path, rule="trimmed_mean", f=1)
    assert resumed.clients == first.clients
    assert resumed.submit_many(ps)[:4] == [first._clients[c] for c in first.clients]
    res = resumed.finalize()
    assert_close(res.update, rules.get("trimmed_mean").reference(x, f=1), 1e-6, 1e-6)


def test_a_ckks_burst_sums_as_he_aggregate_and_rejects_a_bad_ciphertext_alone(ledger, tmp_path):
    pytest.importorskip("tenseal")
    from bcfl_engine import he

    task = new_task(ledger)
    keys = he.generate_keys("default")
    public = keys.public_context()
    x = make_updates(N, D, seed=8)
    blobs = [he.encrypt(x[i].numpy(), public) for i in range(N)]
    cut_short = blobs[2][:-8]
    ps = [sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain, weight=i + 1) for i in range(N)]
    cut = sign_payload(KEYS[2], task, 1, cut_short, ledger.domain, weight=3)
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES[:N], secure="ckks", he_context=public
    )
    out = rnd.submit_many([ps[0], cut, ps[1], ps[3]])
    assert [isinstance(r, dict) for r in out] == [True, False, True, True]
    assert isinstance(out[1], PayloadError) and len(rnd) == 3
    assert all(isinstance(r, dict) for r in rnd.submit_many([ps[2], ps[4], ps[5], ps[6]]))
    res = rnd.finalize()
    order = [0, 1, 3, 2, 4, 5, 6]
    expected = he.aggregate(
        [blobs[i] for i in order], weights=[i + 1 for i in order], context=public
    )
    assert bytes(res.update) == bytes(expected)


# ---- a long burst, pipelined: one part written while the next one's signers are recovered ----


@pytest.fixture
def small_parts(monkeypatch):
    from bcfl_engine import round_intake

    monkeypatch.setattr(round_intake, "PART", 2)  # a burst of 4 or more runs in parts of 2


def test_a_pipelined_burst_answers_and_commits_as_one_part(ledger, tmp_path, monkeypatch):
    from bcfl_engine import round_intake

    x = make_updates(N, D, seed=9)
    nan = x[3].clone()
    nan[0] = float("inf")
    syncs = count_syncs(monkeypatch)
    answers, results = [], []
    for part in (2, 10_000):  # parts of 2 payloads (pipelined), then the burst in one part
        monkeypatch.setattr(round_intake, "PART", part)
        task = new_task(ledger)
        good = [signed(ledger, task, i, x[i]) for i in range(N)]
        burst = [
            good[0],
            good[1],
            signed(ledger, task, 3, nan),  # part 2: not finite
            good[2],
            signed(ledger, task, 1, x[0]),  # part 3: client 1 again, another payload
            good[4],
            dataclasses.replace(good[5], weight=50),  # part 4: not the signed weight
            good[6],
            good[1],  # part 5: a retry of part 1's
        ]
        rnd = make_round(ledger, task, tmp_path / str(part), rule="median", f=1)
        syncs.clear()
        out = rnd.submit_many(burst)
        assert len(syncs) == 1
        answers.append([type(r).__name__ if not isinstance(r, dict) else r["seq"] for r in out])
        rnd.submit_many([good[3], good[5]])
        results.append(rnd.finalize().result_digest)
        assert audit(ledger, task, 1, tmp_path / str(part)).ok
    assert (
        answers[0]
        == answers[1]
        == [
            0,
            1,
            "NonFiniteUpdate",
            2,
            "DuplicateClient",
            3,
            "BadSignature",
            4,
            1,
        ]
    )
    assert results[0] == results[1]


def test_a_pipelined_burst_that_fails_to_write_leaves_nothing(
    ledger, tmp_path, small_parts, monkeypatch
):
    from bcfl_engine.round_log import RoundLog

    task = new_task(ledger)
    x = make_updates(N, D, seed=10)
    ps = [signed(ledger, task, i, x[i]) for i in range(N)]
    rnd = make_round(ledger, task, tmp_path)
    rnd.submit(ps[0])
    size = (PayloadStore(tmp_path).round_dir(rnd.key, 1) / "accepted.log").stat().st_size
    real, calls = RoundLog.append, []

    def third_fails(self, *args, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise OSError(5, "Input/output error")
        return real(self, *args, **kw)

    monkeypatch.setattr(RoundLog, "append", third_fails)
    with pytest.raises(OSError, match="Input/output"):
        rnd.submit_many(ps[1:])
    monkeypatch.undo()
    assert len(rnd) == 1
    path = PayloadStore(tmp_path).round_dir(rnd.key, 1) / "accepted.log"
    assert path.stat().st_size == size and len(RoundLog(path).records) == 1
    assert all(isinstance(r, dict) for r in rnd.submit_many(ps))
    assert make_round(ledger, task, tmp_path).finalize().root == rnd.finalize().root


def test_a_pipelined_ckks_burst_sums_as_he_aggregate(ledger, tmp_path, small_parts):
    pytest.importorskip("tenseal")
    from bcfl_engine import he

    task = new_task(ledger)
    public = he.generate_keys("default").public_context()
    x = make_updates(N, D, seed=12)
    blobs = [he.encrypt(x[i].numpy(), public) for i in range(N)]
    ps = [sign_payload(KEYS[i], task, 1, blobs[i], ledger.domain, weight=i + 1) for i in range(N)]
    bad = sign_payload(KEYS[3], task, 1, blobs[3][:-8], ledger.domain, weight=4)
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=ADDRESSES[:N], secure="ckks", he_context=public
    )
    out = rnd.submit_many([ps[0], ps[1], bad, ps[2], ps[4], ps[5], ps[6]])
    assert [isinstance(r, dict) for r in out] == [True, True, False, True, True, True, True]
    rnd.submit(ps[3])
    order = [0, 1, 2, 4, 5, 6, 3]
    expected = he.aggregate(
        [blobs[i] for i in order], weights=[i + 1 for i in order], context=public
    )
    assert bytes(rnd.finalize().update) == bytes(expected)


def test_a_round_an_older_engine_started_is_refused_with_the_reason(ledger, tmp_path, monkeypatch):
    from store_tools import flip_payload_byte

    from bcfl_engine import protocol

    task = new_task(ledger)
    x = make_updates(N, D, seed=13)
    with monkeypatch.context() as old:  # the engine of format bcfl-round/2: keccak-256 digests
        old.setattr(protocol, "payload_digest", keccak256)
        old.setattr(protocol, "DIGEST", "keccak-256")
        rnd = make_round(ledger, task, tmp_path / "old")
        rnd.submit_many([signed(ledger, task, i, x[i]) for i in range(2)])
    with pytest.raises(PayloadError, match=r"older engine \(payloads named by keccak-256"):
        make_round(ledger, task, tmp_path / "old")
    # Today's round whose stored payload was altered says so.
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path / "new")
    [record] = rnd.submit_many([signed(ledger, task, 0, x[0])])
    flip_payload_byte(PayloadStore(tmp_path / "new"), rnd.key, 1, record["digest"])
    # In the log's last group a payload that no longer matches reads as a torn write: the
    # group is dropped (its client must send again), and said aloud.
    with pytest.warns(RuntimeWarning, match="dropped its last group"):
        assert len(make_round(ledger, task, tmp_path / "new")) == 0
    # Before the last group it is damage, and the round refuses to resume on it.
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path / "two")
    [first] = rnd.submit_many([signed(ledger, task, 0, x[0])])
    rnd.submit_many([signed(ledger, task, 1, x[1])])
    flip_payload_byte(PayloadStore(tmp_path / "two"), rnd.key, 1, first["digest"])
    with pytest.raises(PayloadError, match="was altered"):
        make_round(ledger, task, tmp_path / "two")
