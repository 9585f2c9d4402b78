"""Private rounds on the embedded chain: the DP parameters and the spent epsilon committed in
the round's metadata, a round past its budget refused with nothing changed, and the audit
recomputing epsilon and checking the noise from the chain and the store alone."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import assert_close, make_updates

from bcfl_engine import dp as bdp
from bcfl_engine import protocol, round_dp
from bcfl_engine.errors import BudgetExceeded, DPUnsupported, InvalidArgument, NonFiniteUpdate
from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
pytest.importorskip("dp_accounting")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 5, 4099  # enough coordinates for the audit's test of the noise's scale
KEYS = [keccak256(f"dp hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module")
def ledger():
    return Ledger.embedded()


def new_task(ledger) -> int:
    return ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"dp")


def run_round(ledger, task, r, store, dp, seed=0, clients=N):
    x = make_updates(clients, D, seed=seed + r) * 0.1  # norms ~6.4
    rnd = AggregationRound(ledger, task, r, store, participants=ADDRESSES, dim=D, dp=dp)
    for i in range(clients):
        rnd.submit(sign_payload(KEYS[i], task, r, encode_update(x[i]), ledger.domain, weight=1))
    return rnd, x


def committed_meta(ledger, store, task, r) -> dict:
    from bcfl_engine.store import PayloadStore

    raw = PayloadStore(store).get(ledger.record(task, r).meta_hash, hasher=protocol.meta_hash)
    return json.loads(raw)


def test_private_round_commits_its_parameters_and_audit_recomputes_epsilon(ledger, tmp_path):
    task = new_task(ledger)
    dp = bdp.GaussianDP(clipping_norm=5.0, noise_multiplier=1.2, num_sampled_clients=3)
    for r in (1, 2):
        rnd, x = run_round(ledger, task, r, tmp_path, dp, clients=3)
        res = rnd.finalize()
        meta = committed_meta(ledger, tmp_path, task, r)["dp"]
        q = 3 / N
        want = bdp.epsilon(1.2, q, r, 1e-5)
        assert meta["sample_rate"] == q and meta["epsilon"] == pytest.approx(want, rel=1e-12)
        report = audit(ledger, task, r, tmp_path)
        assert report.ok, report.summary()
        line = next(c for c in report.checked if c.startswith("privacy"))
        assert f"round {r}: {want:.4g}" in line, line
        # The released model is the clipped mean plus noise of the declared scale.
        noise = res.update.double() - bdp.clipped_mean_reference(x, 5.0, 3).double()
        assert abs(float(noise.std()) / dp.noise_std - 1) < 0.1


def test_round_past_its_budget_is_refused_and_changes_nothing(ledger, tmp_path):
    task = new_task(ledger)
    one = bdp.epsilon(1.0, 1.0, 1, 1e-5)
    two = bdp.epsilon(1.0, 1.0, 2, 1e-5)
    dp = bdp.GaussianDP(5.0, 1.0, N, budget=(one + two) / 2)  # room for one round, not two
    run_round(ledger, task, 1, tmp_path, dp)[0].finalize()
    rnd, _ = run_round(ledger, task, 2, tmp_path, dp)
    files = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    with pytest.raises(BudgetExceeded, match="over the budget"):
        rnd.finalize()
    assert ledger.record(task, 2) is None
    assert rnd.result is None and not rnd.committed and len(rnd) == N
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == files
    # The same payloads with a budget that allows it: the round goes through.
    rnd.dp = bdp.GaussianDP(5.0, 1.0, N, budget=two * 1.01)
    rnd.finalize()
    assert committed_meta(ledger, tmp_path, task, 2)["dp"]["epsilon"] == pytest.approx(two)


def test_audit_finds_a_false_epsilon_claim(ledger, tmp_path, monkeypatch):
    task = new_task(ledger)
    dp = bdp.GaussianDP(5.0, 1.0, N)
    rnd, _ = run_round(ledger, task, 1, tmp_path, dp)
    real = round_dp.account
    with monkeypatch.context() as m:  # an aggregator that under-reports
        m.setattr(
            round_dp, "account", lambda ev, delta: bdp.Accounting(0.1, "rdp", 0.1, 0.1, delta)
        )
        rnd.finalize()
    assert round_dp.account is real
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and any("claims epsilon 0.1" in p for p in report.problems), (
        report.summary()
    )


def test_audit_finds_missing_noise(ledger, tmp_path, monkeypatch):
    task = new_task(ledger)
    dp = bdp.GaussianDP(5.0, 1.0, N)
    rnd, x = run_round(ledger, task, 1, tmp_path, dp)
    with monkeypatch.context() as m:  # an aggregator that skips the noise
        m.setattr(round_dp, "private_mean", lambda x, dp, **kw: bdp.clipped_mean(x, 5.0, N))
        res = rnd.finalize()
    assert_close(res.update, bdp.clipped_mean_reference(x, 5.0, N), rtol=1e-5, atol=1e-6)
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and any("declared noise" in p for p in report.problems), report.summary()


def test_zero_noise_round_is_audited_bit_for_bit(ledger, tmp_path):
    task = new_task(ledger)
    rnd, x = run_round(ledger, task, 1, tmp_path, bdp.GaussianDP(5.0, 0.0, N))
    res = rnd.finalize()
    backend = committed_meta(ledger, tmp_path, task, 1)["backend"]
    assert torch.equal(res.update, bdp.clipped_mean(x, 5.0, N, backend=backend))
    report = audit(ledger, task, 1, tmp_path)
    assert report.ok, report.summary()
    assert any("no noise" in c for c in report.checked)


def test_private_round_refuses_rules_without_sensitivity_and_ckks(ledger, tmp_path):
    task = new_task(ledger)
    dp = bdp.GaussianDP(1.0, 1.0, N)
    with pytest.raises(DPUnsupported, match="median"):
        AggregationRound(
            ledger, task, 1, tmp_path, participants=ADDRESSES, dim=D, rule="median", dp=dp
        )
    with pytest.raises(InvalidArgument, match="CKKS"):
        AggregationRound(
            ledger, task, 1, tmp_path, participants=ADDRESSES, secure="ckks", he_context=b"x", dp=dp
        )
    with pytest.raises(InvalidArgument, match="num_sampled_clients"):
        AggregationRound(
            ledger,
            task,
            1,
            tmp_path,
            participants=ADDRESSES,
            dim=D,
            dp=bdp.GaussianDP(1.0, 1.0, N + 1),
        )


def test_audit_reports_malformed_dp_metadata(ledger, tmp_path, monkeypatch):
    task = new_task(ledger)
    rnd, _ = run_round(ledger, task, 1, tmp_path, bdp.GaussianDP(5.0, 1.0, N))
    with monkeypatch.context() as m:  # an aggregator that commits a broken dp object
        m.setattr(round_dp, "dp_meta", lambda *a: {"mechanism": "gaussian", "delta": 1e-5})
        dp = bdp.GaussianDP(5.0, 1.0, N)
        m.setattr(
            round_dp, "private_aggregate", lambda meta, x, norms, noise: bdp.private_mean(x, dp)
        )
        rnd.finalize()
    report = audit(ledger, task, 1, tmp_path)
    assert not report.ok and any("dp field" in p for p in report.problems), report.summary()


def test_private_round_reuses_the_norms_its_intake_took(ledger, tmp_path, monkeypatch):
    # A burst with a NaN payload (refused, the good rows compacted) and single submits: the
    # round's batch holds the kernel's norms of its rows, and finalize hands them to the private
    # mean (no second read); the result with no noise is the clipped mean, bit for bit.
    from test_dp_intake import kernel_norms

    task = new_task(ledger)
    x = make_updates(N, D, seed=11) * torch.linspace(0.05, 0.3, N)[:, None]
    bad = x[1].clone()
    bad[3] = float("nan")
    dp = bdp.GaussianDP(clipping_norm=5.0, noise_multiplier=0.0, num_sampled_clients=N)
    rnd = AggregationRound(ledger, task, 1, tmp_path, participants=ADDRESSES, dim=D, dp=dp)

    def signed(i, v):
        return sign_payload(KEYS[i], task, 1, encode_update(v), ledger.domain, weight=1)

    results = rnd.submit_many([signed(0, x[0]), signed(1, bad), signed(2, x[2])])
    assert isinstance(results[1], NonFiniteUpdate)
    for i in (1, 3, 4):
        rnd.submit(signed(i, x[i]))
    batch = rnd._batch
    assert batch.norms is not None and torch.equal(batch.norms, kernel_norms(batch.data))
    seen = []
    real = bdp.cm_native

    def spy(*a, **k):
        seen.append(a[5] if len(a) > 5 else k.get("norms"))
        return real(*a, **k)

    monkeypatch.setattr(bdp, "cm_native", spy)
    res = rnd.finalize()
    assert seen and seen[0] is not None
    order = [0, 2, 1, 3, 4]  # acceptance order
    assert torch.equal(res.update, bdp.clipped_mean(x[order], 5.0, N, backend="native"))
    assert audit(ledger, task, 1, tmp_path).ok


def test_private_round_draws_its_noise_before_the_clients_come(ledger, tmp_path):
    # The noise is drawn when the round is made (none past the budget), and finalize adds it in
    # one read: the committed result is the clipped mean plus exactly those normals.
    task = new_task(ledger)
    dp = bdp.GaussianDP(clipping_norm=5.0, noise_multiplier=1.0, num_sampled_clients=N)
    rnd = AggregationRound(ledger, task, 1, tmp_path, participants=ADDRESSES, dim=D, dp=dp)
    assert rnd._noise is not None and rnd._noise.dim == D and not rnd._noise.used
    z = rnd._noise._z.clone()
    x = make_updates(N, D, seed=5) * 0.1
    for i in range(N):
        rnd.submit(sign_payload(KEYS[i], task, 1, encode_update(x[i]), ledger.domain, weight=1))
    res = rnd.finalize()
    assert rnd._noise.used
    clean = bdp.clipped_mean(x, 5.0, N, backend="native")
    want = (clean.double() + dp.noise_std * z).float()
    assert_close(res.update, want, rtol=1e-6, atol=1e-7)
    assert audit(ledger, task, 1, tmp_path).ok
    # A round past its budget draws nothing.
    one = bdp.epsilon(1.0, 1.0, 1, 1e-5)
    tight = bdp.GaussianDP(5.0, 1.0, N, budget=one * 1.5)
    nxt = AggregationRound(ledger, task, 2, tmp_path, participants=ADDRESSES, dim=D, dp=tight)
    assert nxt._noise is None
