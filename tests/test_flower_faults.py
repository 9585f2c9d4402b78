"""EngineFedAvg and LegacyEngineFedAvg under the faults a Flower run meets: 0-d and integer
buffers, float64 models, NaN replies, too few replies for the rule, and (in chain mode) the
rule the strategy was given, signed weights and the metrics of the replies that went in."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import ConfigRecord
from test_flower_dropin import failed, message, models, replies

from bcfl_engine import rules
from bcfl_engine.errors import InvalidArgument, PreconditionError
from bcfl_engine.integrations.flower import RECORD_KEY, ROUND_KEY, EngineFedAvg, sign_reply
from bcfl_engine.integrations.flower_legacy import LegacyEngineFedAvg
from bcfl_engine.rules.bulyan import bulyan_select
from bcfl_engine.rules.krum import krum_select, krum_select_reference
from bcfl_engine.rules.multi_krum import multi_krum_select


def flat(arrays) -> torch.Tensor:
    return torch.tensor(np.stack([np.concatenate([np.ravel(a) for a in c]) for c in arrays]))


def as_lists(clients: list[dict[str, np.ndarray]]) -> list[list[np.ndarray]]:
    return [list(c.values()) for c in clients]


# ---- shapes and dtypes ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rule", "f"), [("mean", 0), ("median", 1), ("trimmed_mean", 1), ("krum", 1), ("bulyan", 1)]
)
def test_float64_models_and_0d_int_buffers_keep_shape_dtype_and_precision(rule, f):
    clients = models(7, "float64", seed=5)
    weights = [3, 1, 4, 1, 5, 9, 2]
    got, _ = EngineFedAvg(rule, f).aggregate_train(1, replies(clients, weights))
    out = {k: got[k].numpy() for k in got}
    assert out["num_batches_tracked"].shape == () and out["num_batches_tracked"].dtype == np.int64
    assert out["w"].dtype == np.float64 and out["w"].shape == (3, 4)
    x = np.stack([c["w"].ravel() for c in clients])
    if rule == "mean":
        want = sum(r * (w / sum(weights)) for r, w in zip(x, weights, strict=True))
        np.testing.assert_array_equal(out["w"].ravel(), want)  # Flower's FedAvg, bit for bit
    elif rule == "median":
        np.testing.assert_array_equal(out["w"].ravel(), np.median(x, axis=0))
    elif rule == "trimmed_mean":
        np.testing.assert_allclose(out["w"].ravel(), np.sort(x, axis=0)[1:-1].mean(axis=0), 1e-15)
    elif rule == "krum":  # the selected client's float64 arrays, untouched
        i = int(krum_select_reference(flat(as_lists(clients)), f))
        np.testing.assert_array_equal(out["w"], clients[i]["w"])
        assert out["num_batches_tracked"] == clients[i]["num_batches_tracked"]
    else:  # bulyan: finer than float32 can hold
        ref = rules.bulyan_reference(torch.tensor(x), f).double().numpy()
        np.testing.assert_allclose(out["w"].ravel(), ref, rtol=1e-6)
        assert not np.array_equal(out["w"].ravel(), ref)


@pytest.mark.parametrize("rule", ["mean", "median", "krum"])
def test_narrow_dtypes_come_back_as_they_went_in(rule):
    rng = np.random.default_rng(13)
    clients = [
        {
            "h": rng.standard_normal(6).astype(np.float16),
            "i8": rng.integers(-100, 100, 4).astype(np.int8),
            "u8": rng.integers(0, 255, 3).astype(np.uint8),
            "flag": np.array(i % 2 == 0),
            "i32": np.array(rng.integers(0, 10**6), dtype=np.int32),
        }
        for i in range(5)
    ]
    got, _ = EngineFedAvg(rule, 0 if rule != "median" else 1).aggregate_train(
        1, replies(clients, [1] * 5)
    )
    for k, a in clients[0].items():
        assert got[k].numpy().dtype == a.dtype and got[k].numpy().shape == a.shape, k
    if rule == "median":
        want = np.median(np.stack([c["u8"] for c in clients]).astype(np.float64), axis=0)
        np.testing.assert_array_equal(got["u8"].numpy(), np.rint(want).astype(np.uint8))
        assert bool(got["flag"].numpy()) is True  # 3 of 5 are True


def test_rules_without_a_float64_path_still_give_the_models_dtypes_back():
    clients = models(5, "float64", seed=6)
    got, _ = EngineFedAvg("geometric_median", 1).aggregate_train(1, replies(clients, [1] * 5))
    assert got["w"].numpy().dtype == np.float64 and got["num_batches_tracked"].numpy().shape == ()


def test_sign_reply_takes_0d_integer_arrays_and_a_positive_int_weight():
    pytest.importorskip("eth_account")
    from bcfl_engine.chain import PayloadDomain

    domain = PayloadDomain(1, "0x" + "11" * 20)
    arrays = list(models(1, "float32")[0].values())
    record = sign_reply(arrays, b"\x01" * 32, 1, 1, domain, 7)
    assert isinstance(record, ConfigRecord) and len(record["signature"]) == 65
    for bad in (0, -1, 2.5, True, "7"):
        with pytest.raises(InvalidArgument, match="weight"):
            sign_reply(arrays, b"\x01" * 32, 1, 1, domain, bad)


# ---- too few, NaN, failures ----------------------------------------------------------------


def test_too_few_replies_skip_by_default_and_lower_f_on_request(caplog):
    clients = models(4, "float32", seed=7)
    with caplog.at_level(logging.WARNING):
        assert EngineFedAvg("trimmed_mean", 2).aggregate_train(1, replies(clients, [1] * 4)) == (
            None,
            None,
        )
    assert "4 replies are too few for trimmed_mean with f=2 (it requires n > 2f" in caplog.text
    got, metrics = EngineFedAvg("trimmed_mean", 2, on_too_few="lower_f").aggregate_train(
        1, replies(clients, [1] * 4)
    )
    assert "aggregating with f=1" in caplog.text and metrics is not None
    want = rules.trimmed_mean_reference(flat(as_lists(clients)), 1)
    np.testing.assert_allclose(got["w"].numpy().ravel(), want[:12].numpy(), rtol=1e-6)
    # Flower's default of 2 simulated nodes is too few for Krum even at f = 0 (n >= 3)
    for policy in ("skip", "lower_f"):
        s = EngineFedAvg("krum", 1, on_too_few=policy)
        assert s.aggregate_train(1, replies(models(2, "float32"), [1, 1])) == (None, None)
    with pytest.raises(PreconditionError, match="mean tolerates no Byzantine"):
        EngineFedAvg("mean", 1)  # a setting no reply count can meet is refused up front


def test_a_nan_reply_is_left_out_and_its_metrics_do_not_count(caplog):
    clients = models(5, "float32", seed=8)
    clients[2]["w"][1, 1] = np.inf
    with caplog.at_level(logging.WARNING):
        got, metrics = EngineFedAvg("median", 1).aggregate_train(
            1, [*replies(clients, [1] * 5), failed(9)]
        )
    assert "left out node 2: array 'w' holds NaN or infinity" in caplog.text
    kept = [c for i, c in enumerate(clients) if i != 2]
    want = rules.median_reference(flat(as_lists(kept)))
    np.testing.assert_allclose(got["w"].numpy().ravel(), want[:12].numpy())
    assert metrics["loss"] == pytest.approx(np.mean([0, 1, 3, 4]))
    assert EngineFedAvg("median").aggregate_train(1, [failed(1)]) == (None, None)


@pytest.mark.parametrize("rule", ["krum", "multi_krum", "bulyan"])
def test_selection_rules_report_the_metrics_of_the_selected_replies(rule):
    clients = models(7, "float32", seed=9)
    losses = np.arange(7.0)
    got, metrics = EngineFedAvg(rule, 1).aggregate_train(1, replies(clients, [1] * 7))
    x = flat(as_lists(clients)).float()
    if rule == "krum":
        chosen = [krum_select(x, 1)]
    elif rule == "multi_krum":
        chosen = multi_krum_select(x, 1).tolist()
    else:
        chosen = bulyan_select(x, 1).tolist()
    # the weighted (by num-examples = 1) mean of the selected replies' losses
    assert metrics["loss"] == pytest.approx(losses[chosen].mean())
    want = rules.get(rule).fn(x, f=1)
    np.testing.assert_allclose(got["w"].numpy().ravel(), want[:12].numpy(), rtol=1e-5, atol=1e-6)


# ---- legacy --------------------------------------------------------------------------------


def fit_results(clients, weights):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters

    return [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(c), w, {"loss": float(i)}))
        for i, (c, w) in enumerate(zip(clients, weights, strict=True))
    ]


def test_legacy_strategy_keeps_dtypes_and_survives_nan_and_too_few(caplog):
    from flwr.common import parameters_to_ndarrays
    from flwr.server.strategy import FedAvg as FlowerLegacyFedAvg

    def mean_loss(results):
        return {"loss": sum(n * m["loss"] for n, m in results) / sum(n for n, _ in results)}

    clients = as_lists(models(5, "float64", seed=11))
    weights = [2, 3, 5, 7, 11]
    ours = LegacyEngineFedAvg(fit_metrics_aggregation_fn=mean_loss)
    params, metrics = ours.aggregate_fit(1, fit_results(clients, weights), [])
    theirs, their_metrics = FlowerLegacyFedAvg(fit_metrics_aggregation_fn=mean_loss).aggregate_fit(
        1, fit_results(clients, weights), []
    )
    got, want = parameters_to_ndarrays(params), parameters_to_ndarrays(theirs)
    assert [(a.shape, a.dtype) for a in got] == [(a.shape, a.dtype) for a in clients[0]]
    np.testing.assert_allclose(got[0], want[0], rtol=1e-14)
    # (Flower's legacy in-place FedAvg loses a 0-d integer buffer: ours is the weighted mean)
    counts = sum(c[2] * w for c, w in zip(clients, weights, strict=True)) / sum(weights)
    assert got[2] == np.rint(counts) and metrics == their_metrics
    # a NaN result is left out, its metrics too
    clients[1][1][0] = np.nan
    with caplog.at_level(logging.WARNING):
        params, metrics = ours.aggregate_fit(1, fit_results(clients, weights), [])
    assert "left out client 1: array '1' holds NaN or infinity" in caplog.text
    kept = [0, 2, 3, 4]
    want0 = sum(clients[i][0] * weights[i] for i in kept) / sum(weights[i] for i in kept)
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], want0, rtol=1e-14)
    assert metrics == pytest.approx(mean_loss([(weights[i], {"loss": i}) for i in kept]))
    # too few for Bulyan with f = 1: skip, or lower f
    bulyan = LegacyEngineFedAvg("bulyan", 1)
    assert bulyan.aggregate_fit(1, fit_results(clients[2:], weights[2:]), []) == (None, {})
    lowered = LegacyEngineFedAvg("median", 2, on_too_few="lower_f")
    params, _ = lowered.aggregate_fit(1, fit_results(clients[2:], weights[2:]), [])
    np.testing.assert_array_equal(
        parameters_to_ndarrays(params)[0], np.median(np.stack([c[0] for c in clients[2:]]), 0)
    )
    assert LegacyEngineFedAvg().aggregate_fit(1, fit_results(clients[1:2], [1]), []) == (None, {})


# ---- chain mode ----------------------------------------------------------------------------


class TwoNodes:
    """The little of Flower's Grid that configure_train asks: two connected nodes."""

    run = None

    def get_node_ids(self):
        return [11, 12]


def next_round_in_config(strategy, server_round: int) -> int:
    """The registry round that ``strategy`` tells its clients to sign for in ``server_round``."""
    from flwr.app import ArrayRecord
    from flwr.supercore.task_identity import TaskIdentity

    saved = (
        TaskIdentity._run_id,
        TaskIdentity._node_id,
        TaskIdentity._task_id,
    )  # a Message needs its run
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    try:
        messages = list(
            strategy.configure_train(server_round, ArrayRecord(), ConfigRecord(), TwoNodes())
        )
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    rounds = {int(m.content["config"][ROUND_KEY]) for m in messages}
    assert len(messages) == 2 and len(rounds) == 1
    return rounds.pop()


def test_chain_mode_runs_the_strategys_rule_and_signs_the_weight(tmp_path, caplog):
    pytest.importorskip("web3")
    from eth_account import Account

    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound, audit
    from bcfl_engine.store import PayloadStore
    from bcfl_engine.updates import keccak256

    n = 5
    keys = [keccak256(b"flower faults %d" % i) for i in range(n)]
    addresses = [Account.from_key(k).address for k in keys]
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=addresses, model_spec=b"t")
    store = PayloadStore(tmp_path)
    clients = models(n, "float32", seed=12)
    dim = sum(a.size for a in clients[0].values())
    weights = [3, 1, 4, 1, 5]

    def signed(r: int, weights=weights, clients=clients):
        out = []
        for i, (c, w) in enumerate(zip(clients, weights, strict=True)):
            msg = message(i, c, w, float(i))
            record = sign_reply(list(c.values()), keys[i], task, r, ledger.domain, int(w))
            msg.content[RECORD_KEY] = record
            out.append(msg)
        return out

    def factory(**options):
        return lambda r: AggregationRound(
            ledger, task, r, store, participants=addresses, dim=dim, **options
        )

    # a factory whose rounds run another rule is refused at first use, before any submit
    wrong = EngineFedAvg("median", 1, rounds=factory(rule="mean"))
    with pytest.raises(InvalidArgument, match="round_options"):
        wrong.aggregate_train(1, signed(1))
    assert store.accepted(task, 1) == []

    strategy = EngineFedAvg("median", 2)
    strategy.rounds = factory(**strategy.round_options)
    with caplog.at_level(logging.WARNING):  # 5 replies, one NaN: 4 < 2f + 1, skip
        bad = [dict(c) for c in clients]
        bad[4] = {**bad[4], "b": np.full(5, np.nan, np.float32)}
        assert strategy.aggregate_train(1, signed(1, clients=bad)) == (None, None)
    assert strategy.rejected[1] == ["node 4: array 'b' holds NaN or infinity"]
    assert (
        ledger.record(task, 1) is None and "the next server round collects it again" in caplog.text
    )

    # Server round 2 collects registry round 1, still open: the train config names it, the
    # clients sign for it, and its commit is not refused as a gap.
    assert next_round_in_config(strategy, 2) == 1
    got, metrics = strategy.aggregate_train(2, signed(1))  # all five: the median, committed
    assert strategy.chain_rounds.of(3) == 2 and next_round_in_config(strategy, 3) == 2
    want = rules.median_reference(flat(as_lists(clients)))
    np.testing.assert_allclose(got["w"].numpy().ravel(), want[:12].numpy())
    assert got["num_batches_tracked"].numpy().shape == ()
    assert got["num_batches_tracked"].numpy().dtype == np.int64
    assert sorted(r["weight"] for r in store.accepted(task, 1)) == sorted(weights)
    assert audit(ledger, task, 1, store).ok and metrics is not None

    # lower_f in chain mode: the round runs (and records) the f it used, so the audit agrees
    low = EngineFedAvg("median", 2, on_too_few="lower_f")
    low.rounds = factory(**low.round_options)
    got, _ = low.aggregate_train(2, signed(2)[:3])
    assert "aggregating with f=1" in caplog.text and audit(ledger, task, 2, store).ok
    want = rules.median_reference(flat(as_lists(clients[:3])))
    np.testing.assert_allclose(got["w"].numpy().ravel(), want[:12].numpy())

    # selection rule: metrics of the selected replies; a fractional weight is left out
    krum = EngineFedAvg("krum", 0)  # 4 accepted replies: n >= 2f + 3
    krum.rounds = factory(**krum.round_options)
    msgs = signed(3)
    msgs[0].content["metrics"]["num-examples"] = 2.5
    got, metrics = krum.aggregate_train(3, msgs)
    assert "node 0: weight 2.5 is not a positive integer count" in krum.rejected[3][0]
    chosen = int(krum_select(flat(as_lists(clients[1:])).float(), 0))
    assert metrics["loss"] == pytest.approx(chosen + 1.0)
    np.testing.assert_array_equal(got["w"].numpy(), clients[chosen + 1]["w"])


class TwoClients:
    """The little of Flower's ClientManager that the legacy configure_fit asks."""

    def num_available(self) -> int:
        return 2

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return [object(), object()]


def test_legacy_chain_mode_commits_the_open_round_after_a_server_round_commits_nothing(tmp_path):
    pytest.importorskip("web3")
    from eth_account import Account
    from flwr.common import ndarrays_to_parameters, parameters_to_ndarrays

    from bcfl_engine.chain import Ledger
    from bcfl_engine.integrations.flower_legacy import ADDRESS_KEY, SIGNATURE_KEY
    from bcfl_engine.round import AggregationRound, audit
    from bcfl_engine.updates import keccak256

    keys = [keccak256(b"legacy chain %d" % i) for i in range(3)]
    addresses = [Account.from_key(k).address for k in keys]
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=addresses, model_spec=b"l")
    clients = as_lists(models(3, "float32", seed=13))
    dim = sum(a.size for a in clients[0])
    strategy = LegacyEngineFedAvg()
    strategy.rounds = lambda r: AggregationRound(
        ledger, task, r, tmp_path, participants=addresses, dim=dim, **strategy.round_options
    )
    weights = [2, 3, 4]
    unsigned = fit_results(clients, weights)
    assert strategy.aggregate_fit(1, unsigned, []) == (None, {})  # nothing signed: no commit
    fit_ins = strategy.configure_fit(2, ndarrays_to_parameters(clients[0]), TwoClients())
    [chain_round] = {int(ins.config[ROUND_KEY]) for _, ins in fit_ins}
    assert chain_round == 1
    signed = fit_results(clients, weights)
    for i, (_, res) in enumerate(signed):
        sig = sign_reply(clients[i], keys[i], task, chain_round, ledger.domain, weights[i])
        res.metrics.update({ADDRESS_KEY: sig["address"], SIGNATURE_KEY: sig["signature"]})
    params, _ = strategy.aggregate_fit(2, signed, [])
    want = sum(np.asarray(c[0], np.float64) * w for c, w in zip(clients, weights, strict=True))
    np.testing.assert_allclose(parameters_to_ndarrays(params)[0], want / sum(weights), rtol=1e-6)
    assert ledger.latest_round(task) == 1 and audit(ledger, task, 1, tmp_path).ok
    assert strategy.chain_rounds.of(3) == 2
