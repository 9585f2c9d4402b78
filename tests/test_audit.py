"""The audit of committed rounds: it names what differs between the store and the chain.

The fuzz of every record field is in ``test_audit_fuzz.py``.
"""

from __future__ import annotations

import pytest
from helpers import make_updates
from store_tools import flip_payload_byte, replace_payload

from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 5, 7
KEYS = [keccak256(f"audit hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_task(ledger) -> int:
    return ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"a")


def make_round(ledger, task, store):
    return AggregationRound(ledger, task, 1, store, participants=ADDRESSES, dim=D)


def payloads(ledger, task, round, x):
    return [
        sign_payload(KEYS[i], task, round, encode_update(x[i]), ledger.domain, weight=i + 1)
        for i in range(len(x))
    ]


def _tampered_round(ledger, tmp_path):
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path)
    for p in payloads(ledger, task, 1, make_updates(N, D, seed=6)):
        rnd.submit(p)
    return task, rnd.finalize()


def test_audit_names_an_altered_payload(ledger, tmp_path):
    task, _ = _tampered_round(ledger, tmp_path)
    store = PayloadStore(tmp_path)
    victim = store.accepted(task, 1)[2]
    flip_payload_byte(store, task, 1, victim["digest"])
    report = audit(ledger, task, 1, store)
    assert not report.ok
    text = report.summary()
    assert victim["client"] in text and "altered" in text
    assert "updates root" not in text  # the leaves commit to the accepted digests, not the bytes


def test_audit_names_a_result_digest_that_differs(ledger, tmp_path):
    task, res = _tampered_round(ledger, tmp_path)
    store = PayloadStore(tmp_path)
    record = store.read_round(task, 1)
    record["result_digest"] = "00" * 32
    store.write_round(task, 1, record)
    report = audit(ledger, task, 1, store)
    assert not report.ok and "result digest differs" in report.summary()
    assert "0x" + res.result_digest.hex() in report.summary()


def test_audit_names_participants_that_were_not_registered(ledger, tmp_path):
    task, _ = _tampered_round(ledger, tmp_path)
    store = PayloadStore(tmp_path)
    record = store.read_round(task, 1)
    record["participants"] = record["participants"][::-1]
    store.write_round(task, 1, record)
    report = audit(ledger, task, 1, store)
    assert not report.ok and "not those registered" in report.summary()


def test_audit_catches_an_aggregator_that_commits_a_wrong_result(ledger, tmp_path, monkeypatch):
    import bcfl_engine.round as round_mod

    honest = round_mod.round_aggregate

    def lying(*args, **kw):
        out, raw = honest(*args, **kw)
        return out, raw[:-1] + bytes([raw[-1] ^ 0x40])

    monkeypatch.setattr(round_mod, "round_aggregate", lying)
    task, res = _tampered_round(ledger, tmp_path)
    monkeypatch.undo()
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok
    assert "recomputed" in report.summary() and "0x" + res.result_digest.hex() in report.summary()


def test_audit_of_an_uncommitted_round_fails(ledger, tmp_path):
    task = new_task(ledger)
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and "no commit" in report.summary()


def test_a_round_committed_with_keccak_payload_digests_still_audits(ledger, tmp_path, monkeypatch):
    # A round of format bcfl-round/2 (payloads named by keccak-256), made by patching today's
    # engine back to it; the audit then runs unpatched and picks keccak-256 from its metadata.
    from bcfl_engine import protocol

    with monkeypatch.context() as old:
        old.setattr(protocol, "payload_digest", keccak256)
        old.setattr(protocol, "DIGEST", "keccak-256")
        old.setattr(protocol, "FORMAT", "bcfl-round/2")
        task, res = _tampered_round(ledger, tmp_path)
    store = PayloadStore(tmp_path)
    records = store.accepted(task, 1)
    assert all(store.payload(task, 1, r["digest"], hasher=keccak256) for r in records)
    assert res.result_digest == keccak256(store.get(res.result_digest, hasher=keccak256))
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()
    # ... and it still finds an altered payload, hashing with keccak-256.
    replace_payload(store, task, 1, records[1]["digest"], lambda p: p + b"!")
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and "stored payload altered" in report.summary()


def test_a_blake3_round_names_its_payloads_by_blake3(ledger, tmp_path):
    from blake3 import blake3

    task, res = _tampered_round(ledger, tmp_path)
    store = PayloadStore(tmp_path)
    for r in store.accepted(task, 1):
        assert blake3(store.payload(task, 1, r["digest"])).hexdigest() == r["digest"]
    assert res.result_digest == blake3(encode_update(res.update)).digest()
    assert audit(ledger, task, 1, tmp_path).ok
