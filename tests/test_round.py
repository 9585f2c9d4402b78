"""AggregationRound on the embedded chain: collect, aggregate, commit, resume, audit.

The crash test (an aggregator killed mid-round in a subprocess, then restarted) runs against
anvil, so the chain outlives the aggregator as it would in production.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from helpers import assert_close, make_updates

from bcfl_engine import protocol, rules
from bcfl_engine.errors import (
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
    PayloadError,
    ShapeMismatch,
)
from bcfl_engine.round import AggregationRound, Payload, audit, encode_update, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger, MerkleTree, leaf_hash

N, D = 5, 7  # a prime number of clients, a dimension that is not a power of two
KEYS = [keccak256(f"test hospital {i}".encode()) for i in range(N + 1)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
ROOT = Path(__file__).resolve().parents[1]
ANVIL_KEY = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's dev key 0
)


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_task(ledger, participants=ADDRESSES[:N]) -> int:
    return ledger.create_task(
        aggregator=ledger.sender, participants=participants, model_spec=b"test"
    )


def payloads(ledger, task, round, x, salts=False):
    out = []
    for i in range(len(x)):
        p = sign_payload(KEYS[i], task, round, encode_update(x[i]), ledger.domain, weight=i + 1)
        out.append(dataclasses.replace(p, salt=keccak256(b"salt%d" % i)) if salts else p)
    return out


def make_round(ledger, task, store, **kw):
    kw.setdefault("dim", D)
    return AggregationRound(ledger, task, 1, store, participants=ADDRESSES[:N], **kw)


RULE_CASES = [
    ("mean", 0),
    ("median", 0),
    ("median", 2),
    ("trimmed_mean", 1),
    ("trimmed_mean", 2),
    ("geometric_median", 2),
    ("krum", 1),
]


@pytest.mark.parametrize(("rule", "f"), RULE_CASES, ids=[f"{r}-f{f}" for r, f in RULE_CASES])
def test_round_result_equals_the_rule_reference_and_audit_passes(ledger, tmp_path, rule, f):
    if importlib.util.find_spec(f"bcfl_engine.rules.{rule}") is None:
        pytest.skip(f"rule {rule} is not in this build yet")
    task = new_task(ledger)
    x = make_updates(N, D, seed=3)
    rnd = make_round(ledger, task, tmp_path, rule=rule, f=f)
    for p in payloads(ledger, task, 1, x):
        rnd.submit(p)
    res = rnd.finalize()
    info = rules.get(rule)
    kw = {"f": f} if rule != "mean" else {}
    if info.weighted:
        kw["weights"] = torch.arange(1, N + 1, dtype=torch.float64)
    expected = info.reference(x, **kw)
    tol = (
        (1e-4, 1e-5) if rule == "geometric_median" else (1e-5, 1e-6)
    )  # iterative: stops at tol 1e-6
    assert_close(res.update, expected, *tol)
    assert res.result_digest == protocol.payload_digest(encode_update(res.update))
    assert res.gas_used > 0 and res.clients == [a.lower() for a in ADDRESSES[:N]]
    rec = ledger.record(task, 1)
    assert (rec.updates_root, rec.result_digest, rec.n) == (res.root, res.result_digest, N)
    for i in range(N):
        assert ledger.verify_inclusion(task, 1, res.leaves[i], res.proof(i))
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()


def test_single_client_round(ledger, tmp_path):
    task = new_task(ledger)
    x = make_updates(1, D, seed=4)
    rnd = make_round(ledger, task, tmp_path)
    rnd.submit(payloads(ledger, task, 1, x)[0])
    res = rnd.finalize()
    assert_close(res.update, x[0])
    assert res.proof(0) == [] and audit(ledger, task, 1, tmp_path).ok


ONES = encode_update(torch.ones(D))


def _signed(ledger, task, round, key, data, weight=1):
    return sign_payload(key, task, round, data, ledger.domain, weight)


BAD_CASES = {
    "unsigned": (
        PayloadError,
        "no signature",
        lambda lg, t: Payload(ADDRESSES[0], encode_update(torch.ones(D)), None),
    ),
    "other-round": (
        PayloadError,
        "not by the claimed",
        lambda lg, t: _signed(lg, t, 2, KEYS[0], encode_update(torch.ones(D))),
    ),
    "other-task": (
        PayloadError,
        "not by the claimed",
        lambda lg, t: _signed(lg, t + 1, 1, KEYS[0], encode_update(torch.ones(D))),
    ),
    "forged-client": (
        PayloadError,
        "not by the claimed",
        lambda lg, t: Payload(ADDRESSES[1], ONES, _signed(lg, t, 1, KEYS[0], ONES).signature),
    ),
    "not-participant": (
        PayloadError,
        "not among",
        lambda lg, t: _signed(lg, t, 1, KEYS[N], encode_update(torch.ones(D))),
    ),
    "wrong-size": (
        ShapeMismatch,
        "28 bytes",
        lambda lg, t: _signed(lg, t, 1, KEYS[0], encode_update(torch.ones(D + 1))),
    ),
    "nan": (
        NonFiniteUpdate,
        "NaN",
        lambda lg, t: _signed(lg, t, 1, KEYS[0], encode_update(torch.full((D,), float("nan")))),
    ),
    "zero-weight": (
        InvalidArgument,
        "weight",
        lambda lg, t: _signed(lg, t, 1, KEYS[0], encode_update(torch.ones(D)), 0),
    ),
}


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_bad_payloads_are_rejected_and_leave_the_round_unchanged(ledger, tmp_path, case):
    error, match, make = BAD_CASES[case]
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path)
    rnd.submit(_signed(ledger, task, 1, KEYS[2], encode_update(torch.zeros(D))))
    with pytest.raises(error, match=match):
        rnd.submit(make(ledger, task))
    assert len(rnd) == 1
    assert len(PayloadStore(tmp_path).accepted(task, 1)) == 1


def test_duplicate_client_and_submit_after_commit(ledger, tmp_path):
    task = new_task(ledger)
    rnd = make_round(ledger, task, tmp_path)
    first = rnd.submit(_signed(ledger, task, 1, KEYS[0], encode_update(torch.ones(D))))
    assert rnd.submit(_signed(ledger, task, 1, KEYS[0], encode_update(torch.ones(D)))) == first
    assert len(rnd) == 1  # a retry of the same payload is accepted once
    with pytest.raises(DuplicateClient, match="another payload"):
        rnd.submit(_signed(ledger, task, 1, KEYS[0], encode_update(torch.zeros(D))))
    rnd.finalize()
    with pytest.raises(PayloadError, match="already committed"):
        rnd.submit(_signed(ledger, task, 1, KEYS[1], encode_update(torch.ones(D))))


def test_round_arguments_are_checked(ledger, tmp_path):
    task = new_task(ledger)
    with pytest.raises(InvalidArgument, match="no accepted payload"):
        make_round(ledger, task, tmp_path).finalize()
    with pytest.raises(InvalidArgument, match="registered"):
        AggregationRound(ledger, task, 1, tmp_path, participants=ADDRESSES[1 : N + 1], dim=D)
    with pytest.raises(InvalidArgument, match="dim"):
        make_round(ledger, task, tmp_path, dim=0)
    with pytest.raises(InvalidArgument, match="pre-aggregation"):
        make_round(ledger, task, tmp_path, rule="clip")
    with pytest.raises(InvalidArgument, match="he_context"):
        make_round(ledger, task, tmp_path, secure="ckks")


def test_resume_from_the_store_commits_the_same_root(ledger, tmp_path):
    task = new_task(ledger)
    x = make_updates(N, D, seed=5)
    ps = payloads(ledger, task, 1, x, salts=True)
    first = make_round(ledger, task, tmp_path / "a")
    for p in ps[:3]:
        first.submit(p)
    resumed = make_round(ledger, task, tmp_path / "a")  # the aggregator restarted
    assert resumed.clients == first.clients
    for p in ps[3:]:
        resumed.submit(p)
    leaves = [leaf_hash(1, p.client, protocol.payload_digest(p.data), p.weight, p.salt) for p in ps]
    assert resumed.finalize().root == MerkleTree.from_leaves(leaves).root


# ---- crash safety: kill the aggregator mid-round, restart it ---------------------------------

AGGREGATOR = textwrap.dedent(
    """
    import pickle, sys, time
    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound
    url, key, address, task, store, path, stop = sys.argv[1:8]
    ps = pickle.load(open(path, "rb"))
    ledger = Ledger.connect(url, key=key, address=address)
    rnd = AggregationRound(ledger, int(task), 1, store, participants=[p.client for p in ps], dim=int(sys.argv[8]))
    print("resumed", len(rnd), flush=True)
    for p in ps:
        if p.client.lower() in rnd.clients:
            continue
        rnd.submit(p)
        print("accepted", p.client, flush=True)
        if len(rnd) == int(stop):
            print("waiting", flush=True)
            time.sleep(120)
    print("root", rnd.finalize().root.hex(), flush=True)
    """
)


@pytest.fixture(scope="module")
def anvil(anvil_url):
    return Ledger.connect(anvil_url, key=ANVIL_KEY)


@pytest.mark.slow
def test_killed_aggregator_restarts_without_losing_payloads_and_commits_the_same_root(
    anvil, tmp_path
):
    import pickle

    task = new_task(anvil)
    ps = payloads(anvil, task, 1, make_updates(N, D, seed=8), salts=True)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(ps))
    (tmp_path / "agg.py").write_text(AGGREGATOR)
    url = anvil.w3.provider.endpoint_uri
    args = [sys.executable, str(tmp_path / "agg.py"), url, ANVIL_KEY, anvil.address, str(task)]
    args += [str(tmp_path / "store"), str(tmp_path / "p.pkl")]
    proc = subprocess.Popen([*args, "3", str(D)], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    lines = []
    try:
        while (line := proc.stdout.readline()) and line.strip() != "waiting":
            lines.append(line.strip())
    finally:
        proc.kill()  # SIGKILL: no cleanup, no flush, as a crash
        proc.wait()
    assert sum(line.startswith("accepted") for line in lines) == 3, lines
    assert len(PayloadStore(tmp_path / "store").accepted(task, 1)) == 3
    assert anvil.record(task, 1) is None
    done = subprocess.run(
        [*args, "0", str(D)], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    out = done.stdout.split("\n")
    assert out[0] == "resumed 3" and sum(x.startswith("accepted") for x in out) == N - 3
    leaves = [leaf_hash(1, p.client, protocol.payload_digest(p.data), p.weight, p.salt) for p in ps]
    expected = MerkleTree.from_leaves(leaves).root
    assert f"root {expected.hex()}" in out
    assert anvil.record(task, 1).updates_root == expected
    report = audit(anvil, task, 1, tmp_path / "store")
    assert report.ok, report.summary()


# ---- restarts: a committed round, a fresh chain on the same store ----------------------------


def _files(root: Path) -> list[tuple[Path, bytes]]:
    return sorted((p, p.read_bytes()) for p in root.rglob("*") if p.is_file())


def test_a_committed_round_refuses_payloads_after_a_restart(ledger, tmp_path):
    from bcfl_engine.chain.errors import RoundConflict

    task = new_task(ledger)
    ps = payloads(ledger, task, 1, make_updates(N, D, seed=12))
    first = make_round(ledger, task, tmp_path)
    for p in ps[:3]:
        first.submit(p)
    res = first.finalize()
    before, block = _files(tmp_path), ledger.w3.eth.block_number
    again = make_round(ledger, task, tmp_path)  # the aggregator restarted after the commit
    assert again.committed and again.clients == res.clients
    with pytest.raises(PayloadError, match="already committed"):
        again.submit(ps[3])
    with pytest.raises(PayloadError, match="already committed"):
        again.submit(ps[0])
    out = again.finalize()
    assert (out.root, out.result_digest, out.meta_hash) == (
        res.root,
        res.result_digest,
        res.meta_hash,
    )
    assert torch.equal(out.update, res.update) and out.receipt.noop and out.gas_used == res.gas_used
    assert out.proof(1) == res.proof(1)
    assert ledger.w3.eth.block_number == block and _files(tmp_path) == before  # nothing sent
    lost = make_round(ledger, task, tmp_path / "elsewhere")  # a store without its records
    with pytest.raises(PayloadError, match="already committed"):
        lost.submit(ps[3])
    with pytest.raises(RoundConflict, match="holds none"):
        lost.finalize()


def test_a_rerun_on_a_fresh_embedded_chain_is_a_new_run(tmp_path):
    """Same deterministic chain: task 1 at the same registry address, same clients, one store."""
    seen, ledgers = [], []
    for run in range(2):
        fresh = Ledger.embedded()
        ledgers.append(fresh)
        task = new_task(fresh)
        seen.append((fresh.chain_id, fresh.address, task))
        x = make_updates(N, D, seed=20 + run)
        rnd = make_round(fresh, task, tmp_path)
        assert len(rnd) == 0
        ps = payloads(fresh, task, 1, x)
        for p in ps[:2]:
            rnd.submit(p)
        resumed = make_round(fresh, task, tmp_path)  # resume within a run still works
        assert resumed.clients == rnd.clients
        for p in ps[2:]:
            resumed.submit(p)
        res = resumed.finalize()
        w = torch.arange(1, N + 1, dtype=torch.float64)
        assert_close(res.update, (w[:, None] * x.double()).sum(0) / w.sum())
        report = audit(fresh, task, 1, tmp_path)
        assert report.ok, report.summary()
    assert seen[0] == seen[1]  # the scenario: nothing but the chain's history tells them apart
    assert len(list((tmp_path / "rounds").iterdir())) == 2
    assert audit(ledgers[0], 1, 1, tmp_path).ok  # the first run stays auditable
