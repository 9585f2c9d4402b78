"""The drop-in strategies (bcfl_engine.integrations.flower.FedAvg, ...) against Flower's own on
the same replies: same arrays (bit for bit in float64), same metrics, and no exception where
Flower carries on."""

from __future__ import annotations

import logging
import time
from unittest.mock import Mock

import numpy as np
import pytest

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.common import Error
from flwr.serverapp import strategy as flower

from bcfl_engine.errors import InvalidArgument
from bcfl_engine.integrations import flower as ours

# Each drop-in with the arguments the grid runs it with (f = 1 throughout).
STRATEGIES = {
    "FedAvg": {},
    "FedMedian": {},
    "FedTrimmedAvg": {"beta": 0.2},
    "Krum": {"num_malicious_nodes": 1},
    "MultiKrum": {"num_malicious_nodes": 1, "num_nodes_to_select": 3},
    "Bulyan": {"num_malicious_nodes": 1},
}
WEIGHTS = [3, 1, 4, 1, 5, 9, 2]  # 7 replies: Bulyan's n >= 4f + 3 holds for f = 1


def message(node: int, arrays: dict[str, np.ndarray], weight: float, loss: float) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({k: Array(np.asarray(a)) for k, a in arrays.items()}),
            "metrics": MetricRecord({"num-examples": weight, "loss": loss}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"i{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content, metadata=meta)


def failed(node: int) -> Message:
    """A reply that carries Flower's error instead of content (a client that crashed)."""
    msg = message(node, {"w": np.zeros(1)}, 1, 0.0)
    return Message(error=Error(code=0, reason="client crashed"), reply_to=msg)


def models(n: int, dtype: str, seed: int = 0) -> list[dict[str, np.ndarray]]:
    """n models: a [3, 4] matrix and a [5] bias in ``dtype``, and BatchNorm's 0-d int64
    ``num_batches_tracked``."""
    rng = np.random.default_rng(seed)
    return [
        {
            "w": rng.standard_normal((3, 4)).astype(dtype),
            "b": rng.standard_normal(5).astype(dtype),
            "num_batches_tracked": np.array(rng.integers(0, 1000), dtype=np.int64),
        }
        for _ in range(n)
    ]


def replies(clients: list[dict[str, np.ndarray]], weights: list[float]) -> list[Message]:
    """Fresh messages each call: Flower's FedMedian and FedTrimmedAvg empty the replies' records."""
    return [
        message(i, {k: v.copy() for k, v in c.items()}, w, float(i))
        for i, (c, w) in enumerate(zip(clients, weights, strict=True))
    ]


def assert_same_arrays(got: ArrayRecord, want: ArrayRecord, exact: bool) -> None:
    """Ours keep each array's dtype; Flower's turn integer arrays into float64: those must
    match Flower's value rounded to nearest."""
    assert list(got.keys()) == list(want.keys())
    for k in want:
        g, w = got[k].numpy(), want[k].numpy()
        assert g.shape == w.shape, k
        if g.dtype.kind == "i":
            np.testing.assert_array_equal(g, np.rint(w), err_msg=k)
        elif exact:
            assert g.dtype == w.dtype, k
            np.testing.assert_array_equal(g, w, err_msg=k)
        else:
            assert g.dtype == w.dtype, k
            np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6, err_msg=k)


def run_both(name: str, kwargs: dict, msgs: list) -> tuple:
    theirs = getattr(flower, name)(**kwargs).aggregate_train(1, msgs())
    mine = getattr(ours, name)(**kwargs).aggregate_train(1, msgs())
    return mine, theirs


# ---- ours vs Flower's ----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_drop_in_matches_flower_on_the_same_replies(name, dtype):
    clients = models(len(WEIGHTS), dtype, seed=1)
    (got, got_metrics), (want, want_metrics) = run_both(
        name, STRATEGIES[name], lambda: replies(clients, WEIGHTS)
    )
    assert isinstance(getattr(ours, name)(), getattr(flower, name))
    # float64: Flower's own arithmetic, so the same bits; Bulyan averages its closest values
    # in another order (Flower's argpartition), so float tolerance there.
    exact = dtype == "float64" and name != "Bulyan"
    if dtype == "float64" and name == "Bulyan":
        for k in want:
            if got[k].numpy().dtype.kind == "f":
                np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-14, atol=0)
    assert_same_arrays(got, want, exact)
    assert got["num_batches_tracked"].numpy().shape == ()
    assert got["num_batches_tracked"].numpy().dtype == np.int64
    assert dict(got_metrics) == pytest.approx(dict(want_metrics))  # selected replies' metrics


def test_multikrum_weights_the_selected_updates_by_their_example_counts():
    clients = models(6, "float64", seed=2)
    weights = [1, 100, 1, 50, 1, 7]
    kwargs = {"num_malicious_nodes": 1, "num_nodes_to_select": 4}
    (got, metrics), (want, want_metrics) = run_both(
        "MultiKrum", kwargs, lambda: replies(clients, weights)
    )
    assert_same_arrays(got, want, exact=True)
    assert dict(metrics) == dict(want_metrics)
    # and it is not the unweighted mean of the same selection
    unweighted, _ = ours.MultiKrum(**kwargs).aggregate_train(1, replies(clients, [1] * 6))
    assert not np.allclose(got["w"].numpy(), unweighted["w"].numpy())


def test_drop_ins_take_flowers_positional_arguments_and_add_two_keywords(caplog):
    s = ours.Krum(0.5, 0.0, 3, 0, 3, 2, backend="torch", on_too_few="lower_f")
    with caplog.at_level(logging.INFO):
        s.summary()
    assert "Number of malicious nodes: 2" in caplog.text  # Flower's own summary
    assert "bcfl_engine: backend=torch on_too_few=lower_f" in caplog.text
    assert (s.fraction_train, s.min_train_nodes, s.num_malicious_nodes) == (0.5, 3, 2)
    assert s.backend == "torch" and s.on_too_few is ours.OnTooFew.LOWER_F
    assert ours.FedTrimmedAvg(beta=0.3).beta == 0.3
    with pytest.raises(ValueError):  # Flower's own check of beta
        ours.FedTrimmedAvg(beta=0.5)
    with pytest.raises(InvalidArgument, match="on_too_few"):
        ours.Bulyan(on_too_few="maybe")


# ---- Flower's own test cases, reproduced with our classes ----------------------------------


def mock_reply(arrays: list[np.ndarray], num_examples: float) -> Mock:
    """A reply as Flower's own strategy tests build it: a Mock with Message's interface."""
    msg = Mock(spec=Message)
    msg.content = RecordDict(
        {"arrays": ArrayRecord(arrays), "metrics": MetricRecord({"num-examples": num_examples})}
    )
    msg.has_error.side_effect = lambda: False
    msg.has_content.side_effect = lambda: True
    return msg


def test_flower_case_fedmedian_of_three():
    rows = [[1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5]]
    msgs = [mock_reply([np.array(r)], w) for r, w in zip(rows, [5, 2, 9], strict=True)]
    got, _ = ours.FedMedian().aggregate_train(1, msgs)
    out = got.to_numpy_ndarrays()[0]
    assert out.dtype == np.float64
    np.testing.assert_array_equal(out, np.full(4, 0.5))


def test_flower_case_fedtrimmedavg_cuts_a_quarter_at_each_end():
    rows = [[0.5] * 4, [1.0, 0.2, 0.5, 1.0], [0.2, 0.5, 1.0, 0.2], [0.5, 1.0, 0.2, 0.5]]
    msgs = [mock_reply([np.array(r)], w) for r, w in zip(rows, [1, 5, 2, 9], strict=True)]
    got, _ = ours.FedTrimmedAvg(beta=0.25).aggregate_train(1, msgs)
    np.testing.assert_array_equal(got.to_numpy_ndarrays()[0], np.full(4, 0.5))


def test_flower_case_fedtrimmedavg_keeps_a_0d_array():
    msgs = [mock_reply([np.array(v)], 1) for v in (0.5, 1.0, 2.0, 100.0)]
    got, _ = ours.FedTrimmedAvg(beta=0.25).aggregate_train(1, msgs)
    out = got.to_numpy_ndarrays()[0]
    assert out.shape == ()
    np.testing.assert_array_equal(out, np.array(1.5))


def test_flower_case_krum_of_three_picks_the_middle_one_bit_for_bit(caplog):
    msgs = [mock_reply([np.full(4, v)], 5) for v in (0.2, 0.7, 1.0)]
    with caplog.at_level(logging.WARNING):
        got, _ = ours.Krum(num_malicious_nodes=1).aggregate_train(1, msgs)
    assert got.object_id == ArrayRecord([np.full(4, 0.7)]).object_id
    # n = 3 < 2f + 3: Flower answers anyway; so do we, and say which guarantee is lost
    assert "Krum's guarantee (n > 2f + 2" in caplog.text


def test_flower_case_multikrum_averages_the_two_best_bit_for_bit():
    msgs = [mock_reply([np.full(4, v)], 5) for v in (0.2, 0.5, 1.0)]
    strategy = ours.MultiKrum(num_malicious_nodes=1, num_nodes_to_select=2)
    got, _ = strategy.aggregate_train(1, msgs)
    assert got.object_id == ArrayRecord([np.full(4, 0.35)]).object_id


# ---- faults Flower survives: so must we ----------------------------------------------------


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_a_nan_reply_is_left_out_named_and_the_round_goes_on(name, caplog):
    clients = models(8, "float32", seed=3)
    clients[5]["b"][2] = np.nan
    weights = [*WEIGHTS, 6]
    with caplog.at_level(logging.WARNING):
        got, metrics = getattr(ours, name)(**STRATEGIES[name]).aggregate_train(
            1, replies(clients, weights)
        )
    assert "left out node 5: array 'b' holds NaN or infinity" in caplog.text
    clean = [c for i, c in enumerate(clients) if i != 5]
    clean_w = [w for i, w in enumerate(weights) if i != 5]
    # Flower on the other replies (node ids shift, weights and losses are what count)
    msgs = [
        message(i, {k: v.copy() for k, v in c.items()}, w, float(j))
        for i, (j, c, w) in enumerate(
            zip([j for j in range(8) if j != 5], clean, clean_w, strict=True)
        )
    ]
    want, want_metrics = getattr(flower, name)(**STRATEGIES[name]).aggregate_train(1, msgs)
    assert_same_arrays(got, want, exact=False)
    assert dict(metrics) == pytest.approx(dict(want_metrics))  # the NaN reply's loss is out


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_all_replies_failed_or_rejected_gives_no_model(name):
    s = getattr(ours, name)(**STRATEGIES[name])
    assert s.aggregate_train(1, [failed(1), failed(2)]) == (None, None)
    bad = models(2, "float64")
    for c in bad:
        c["w"][0, 0] = np.inf
    assert s.aggregate_train(1, replies(bad, [1, 2])) == (None, None)
    assert s.aggregate_train(1, []) == (None, None)


def test_bulyan_with_too_few_replies_skips_or_lowers_f(caplog):
    clients = models(5, "float64", seed=4)  # 5 < 4f + 3 = 7 for f = 1
    weights = [1, 2, 3, 4, 5]
    want, _ = flower.Bulyan(num_malicious_nodes=1).aggregate_train(1, replies(clients, weights))
    assert want is None  # Flower skips
    with caplog.at_level(logging.WARNING):
        got = ours.Bulyan(num_malicious_nodes=1).aggregate_train(1, replies(clients, weights))
    assert got == (None, None) and "5 replies are too few for Bulyan with f=1" in caplog.text
    lowered, metrics = ours.Bulyan(num_malicious_nodes=1, on_too_few="lower_f").aggregate_train(
        1, replies(clients, weights)
    )
    assert "aggregating with f=0" in caplog.text
    f0, f0_metrics = flower.Bulyan(num_malicious_nodes=0).aggregate_train(
        1, replies(clients, weights)
    )
    for k in f0:
        if lowered[k].numpy().dtype.kind == "f":
            np.testing.assert_allclose(lowered[k].numpy(), f0[k].numpy(), rtol=1e-14)
    assert dict(metrics) == pytest.approx(dict(f0_metrics))
    # Flower's default of 2 simulated nodes: too few even for f = 0 (n >= 3): skip either way
    two = models(2, "float32")
    for policy in ("skip", "lower_f"):
        s = ours.Bulyan(on_too_few=policy)
        assert s.aggregate_train(1, replies(two, [1, 1])) == (None, None)


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("f", [0, 1, 2])
def test_ours_never_raises_where_flower_carries_on(name, n, f):
    kwargs = dict(STRATEGIES[name])
    if "num_malicious_nodes" in kwargs:
        kwargs["num_malicious_nodes"] = f
    clients = models(n, "float64", seed=10 * n + f)
    weights = list(range(1, n + 1))
    want, want_metrics = getattr(flower, name)(**kwargs).aggregate_train(
        1, [*replies(clients, weights), failed(99)]
    )
    got, metrics = getattr(ours, name)(**kwargs).aggregate_train(
        1, [*replies(clients, weights), failed(99)]
    )
    if want is None:  # Flower gives no model (Bulyan): neither do we, by default
        assert got is None
    else:
        assert_same_arrays(got, want, exact=name != "Bulyan")
        assert dict(metrics) == pytest.approx(dict(want_metrics))
