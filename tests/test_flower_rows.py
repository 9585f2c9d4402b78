"""The Flower path without a batch (bcfl_engine.integrations.flower_rows and its kernels in
csrc/mean.cpp and csrc/_distances.cpp), and the reply reading around it (flower_replies):

- the weighted sum over rows held in pieces, bit for bit against numpy's float32 arithmetic
  (Flower's FedAvg), on awkward shapes, threaded and not, on both sides of ROWS_PARALLEL;
- the distances read off the views against the stacked path and the float64 oracle, and the
  clients Krum, Multi-Krum and Bulyan select against the torch reference;
- the fallbacks (no native backend, float16, one client, NaN) and the kernels' input checks;
- the reply checks and train metrics against Flower's own."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord, MetricRecord, RecordDict
from flwr.serverapp import strategy as flower
from flwr.serverapp.exception import InconsistentMessageReplies
from flwr.serverapp.strategy.strategy_utils import (
    aggregate_metricrecords,
    validate_message_reply_consistency,
)
from test_flower_dropin import message, replies

from bcfl_engine.backends import native
from bcfl_engine.errors import BackendUnavailable, InvalidArgument
from bcfl_engine.integrations import flower as ours
from bcfl_engine.integrations.flower_arrays import Stack, layout
from bcfl_engine.integrations.flower_replies import consistent, train_metrics
from bcfl_engine.integrations.flower_rows import (
    ROWS_PARALLEL,
    rows_sq_dists,
    rows_weighted_sum,
)
from bcfl_engine.integrations.flower_stream import streamed_mean
from bcfl_engine.rules._distances import sq_dists_reference

try:
    native()
    HAVE_NATIVE = True
except BackendUnavailable:
    HAVE_NATIVE = False
needs_native = pytest.mark.skipif(not HAVE_NATIVE, reason="the C++ extension is not built")


def clients(n: int, sizes: list[int], seed: int = 0, wide: bool = False) -> list[list[np.ndarray]]:
    """n clients' float32 arrays of ``sizes`` (as read-only views over bytes, as replies hold
    them), plus a float64 and an int64 array if ``wide``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        arrays = [
            np.frombuffer(rng.standard_normal(s).astype(np.float32).tobytes(), np.float32)
            for s in sizes
        ]
        if wide:
            arrays.append(rng.standard_normal((2, 3)))
            arrays.append(np.array(rng.integers(0, 100), np.int64))
        out.append(arrays)
    return out


def flower_sum(arrays: list[list[np.ndarray]], shares: list[float]) -> np.ndarray:
    """Flower's FedAvg arithmetic in numpy: ``acc = a_0 * s_0; acc += a_i * s_i``, per array."""
    out = []
    for j in range(len(arrays[0])):
        acc = arrays[0][j] * shares[0]
        for a, s in zip(arrays[1:], shares[1:], strict=True):
            acc += a[j] * s
        out.append(acc.reshape(-1))
    return np.concatenate(out)


# ---- the weighted sum ---------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize(
    "n,sizes",
    [(1, [7]), (2, [1]), (3, [4096, 4097]), (5, [4099, 13, 1]), (7, [8191]), (33, [3, 5000, 17])],
    ids=lambda v: str(v),
)
@pytest.mark.parametrize("parallel", [False, True], ids=["one-thread", "threads"])
def test_weighted_sum_is_numpys_float32_arithmetic_bit_for_bit(n, sizes, parallel, monkeypatch):
    import bcfl_engine.integrations.flower_rows as fr

    monkeypatch.setattr(fr, "ROWS_PARALLEL", 0 if parallel else 1 << 62)
    arrays = clients(n, sizes, seed=n)
    weights = [float(3 + 2 * i) for i in range(n)]
    shares = [w / sum(weights) for w in weights]
    slots, d32, _ = layout(arrays[0])
    got = rows_weighted_sum(arrays, slots, shares, d32)
    assert got is not None
    np.testing.assert_array_equal(got, flower_sum(arrays, shares))


@needs_native
def test_weighted_sum_is_the_same_on_both_sides_of_the_thread_threshold():
    d = ROWS_PARALLEL // 8  # n = 7 is below the threshold, n = 9 above
    for n in (7, 9):
        arrays = clients(n, [d - 5, 5], seed=n)
        shares = [1.0 / n] * n
        slots, d32, _ = layout(arrays[0])
        assert (n * d32 >= ROWS_PARALLEL) == (n == 9)
        got = rows_weighted_sum(arrays, slots, shares, d32)
        assert got is not None
        np.testing.assert_array_equal(got, flower_sum(arrays, shares))


@pytest.mark.parametrize("wide", [False, True], ids=["float32", "with-float64-int64"])
def test_streamed_mean_native_and_numpy_give_flowers_bits(wide):
    arrays = clients(6, [4097, 3], seed=2, wide=wide)
    weights = [5.0, 1.0, 7.0, 2.0, 2.0, 11.0]
    numpy_path = streamed_mean(arrays, weights, backend="torch")  # forced: no extension
    assert numpy_path is not None
    total = sum(weights)
    want = flower_sum([a[:2] for a in arrays], [w / total for w in weights])
    np.testing.assert_array_equal(np.concatenate([a.reshape(-1) for a in numpy_path[:2]]), want)
    if HAVE_NATIVE:
        native_path = streamed_mean(arrays, weights)
        assert native_path is not None
        for g, w in zip(native_path, numpy_path, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            np.testing.assert_array_equal(g, w)


def test_fedavg_drop_in_gives_flowers_float32_bits():
    rng = np.random.default_rng(3)
    models = [
        {
            "w": rng.standard_normal((33, 7)).astype(np.float32),
            "b": rng.standard_normal(5).astype(np.float32),
        }
        for _ in range(9)
    ]
    weights = [float(1 + i * i) for i in range(9)]
    want, _ = flower.FedAvg().aggregate_train(1, replies(models, weights))
    got, _ = ours.FedAvg().aggregate_train(1, replies(models, weights))
    assert want is not None and got is not None
    for k in ("w", "b"):
        np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())


# ---- the distances ------------------------------------------------------------------------------


@needs_native
@pytest.mark.parametrize("wide", [False, True], ids=["float32", "with-float64-int64"])
@pytest.mark.parametrize("n,sizes", [(2, [5]), (7, [257, 3, 1000]), (13, [4099, 1])], ids=str)
def test_distances_off_the_views_match_the_stack_and_the_oracle(n, sizes, wide):
    arrays = clients(n, sizes, seed=n, wide=wide)
    slots, _, _ = layout(arrays[0])
    got = rows_sq_dists(arrays, slots)
    assert got is not None
    stack = Stack.of(arrays)
    want = stack.sq_dists()
    ref = sq_dists_reference(stack.x32) + (
        sq_dists_reference(torch.from_numpy(stack.x64)) if stack.x64.shape[1] else 0
    )
    scale = float(ref.max())
    assert float((got - want).abs().max()) <= 1e-6 * scale
    assert float((got - ref).abs().max()) <= 1e-6 * scale
    assert bool((got.diagonal() == 0).all()) and bool((got == got.T).all())


def far_outlier_replies(n: int, seed: int) -> tuple[list[dict[str, np.ndarray]], list[float]]:
    """n models around a shared large component, one of them far away: the case where the
    Gram's cancellation is worst (see rules/_distances.py)."""
    rng = np.random.default_rng(seed)
    base = 100.0 + rng.standard_normal(3001).astype(np.float32)
    models = []
    for i in range(n):
        v = base + 0.01 * rng.standard_normal(3001).astype(np.float32)
        if i == 2:
            v = v + 50.0
        models.append(
            {"w": v[:2000].reshape(40, 50), "b": v[2000:], "steps": np.array(i, np.int64)}
        )
    return models, [float(1 + i % 4) for i in range(n)]


@needs_native
@pytest.mark.parametrize("rule", ["krum", "multi_krum", "bulyan"])
def test_engine_selections_off_the_views_are_the_references(rule):
    models, weights = far_outlier_replies(11, seed=5)
    f = 2
    params = {"m": 4} if rule == "multi_krum" else None
    fast = ours.EngineFedAvg(rule, f=f, params=params)
    ref = ours.EngineFedAvg(rule, f=f, params=params, backend="torch")
    got, _ = fast.aggregate_train(1, replies(models, weights))
    want, _ = ref.aggregate_train(1, replies(models, weights))
    assert got is not None and want is not None
    # distances off the views: only the selected replies were stacked, never all 11
    assert all(key[0] < 11 for key in fast.stack_pool._buffers)
    for k in ("w", "b", "steps"):
        if rule == "krum":
            np.testing.assert_array_equal(got[k].numpy(), want[k].numpy())
        else:
            np.testing.assert_allclose(got[k].numpy(), want[k].numpy(), rtol=1e-6)


@needs_native
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("Krum", {"num_malicious_nodes": 2}),
        ("MultiKrum", {"num_malicious_nodes": 2, "num_nodes_to_select": 3}),
        ("Bulyan", {"num_malicious_nodes": 2}),
    ],
)
def test_drop_in_selections_off_the_views_are_flowers(name, kwargs):
    models, weights = far_outlier_replies(11, seed=8)
    mine, mine_metrics = getattr(ours, name)(**kwargs).aggregate_train(1, replies(models, weights))
    theirs, their_metrics = getattr(flower, name)(**kwargs).aggregate_train(
        1, replies(models, weights)
    )
    assert mine is not None and theirs is not None
    np.testing.assert_allclose(mine["w"].numpy(), theirs["w"].numpy(), rtol=1e-6)
    assert dict(mine_metrics) == pytest.approx(dict(their_metrics))  # the same replies chosen


def test_rows_path_declines_what_the_stacked_path_must_handle():
    arrays = clients(4, [10, 3])
    slots, _, _ = layout(arrays[0])
    assert rows_sq_dists(arrays, slots, backend="torch") is None  # another backend forced
    assert rows_weighted_sum(arrays, slots, [0.25] * 4, 13, backend="torch") is None
    assert rows_sq_dists(arrays[:1], slots) is None  # one client: nothing to compare
    half = [[a.astype(np.float16) for a in c] for c in arrays]
    hslots, _, _ = layout(half[0])
    assert rows_sq_dists(half, hslots) is None  # float16: the stack converts it
    if HAVE_NATIVE:
        bad = [list(c) for c in arrays]
        bad[2][1] = np.array([1.0, np.nan, 2.0], np.float32)
        assert rows_sq_dists(bad, slots) is None  # NaN: the stacked path names the reply
        inf64 = clients(4, [10], wide=True)
        inf64[1][1] = np.array([[1.0, np.inf, 0, 0, 0, 0]]).reshape(2, 3)
        assert rows_sq_dists(inf64, layout(inf64[0])[0]) is None


def test_krum_with_a_nan_reply_leaves_it_out_and_names_it(caplog):
    models, weights = far_outlier_replies(9, seed=1)
    models[4]["b"] = models[4]["b"].copy()
    models[4]["b"][3] = np.nan
    s = ours.Krum(num_malicious_nodes=1)
    with caplog.at_level(logging.WARNING):
        got, _ = s.aggregate_train(1, replies(models, weights))
    assert got is not None and np.isfinite(got["b"].numpy()).all()
    assert "node 4" in caplog.text and "'b'" in caplog.text


@needs_native
def test_kernels_refuse_pieces_of_the_wrong_size_or_count():
    lib = native()
    rows = [np.zeros(4, np.float32), np.zeros(3, np.float32)]
    out = torch.empty(7)
    s = torch.ones(1)
    with pytest.raises(InvalidArgument, match="expected 12"):
        lib.weighted_sum_rows([rows[0], rows[0]], [4, 3], s, out, False)
    with pytest.raises(InvalidArgument, match="n \\* 2 rows"):
        lib.weighted_sum_rows(rows[:1], [4, 3], s, out, False)
    with pytest.raises(InvalidArgument, match="shares"):
        lib.weighted_sum_rows(rows, [4, 3], torch.ones(2), out, False)
    with pytest.raises(InvalidArgument, match="pivot"):
        lib.gram_centered_rows(rows, [4, 3], 1, torch.empty(1, 1, dtype=torch.float64))
    with pytest.raises(InvalidArgument, match="bytes-like"):
        lib.gram_centered_rows([1, 2], [4, 3], 0, torch.empty(1, 1, dtype=torch.float64))


# ---- reply checks and metrics against Flower's ---------------------------------------------------


def contents(*metrics: dict, arrays: list[dict] | None = None, extra: dict | None = None) -> list:
    out = []
    for i, m in enumerate(metrics):
        names = arrays[i] if arrays else {"w": np.ones(2, np.float32)}
        rec = {
            "arrays": ArrayRecord({k: Array(v) for k, v in names.items()}),
            "metrics": MetricRecord(m),
        }
        rec.update(extra or {})
        out.append(RecordDict(rec))
    return out


CASES = {
    "consistent": contents({"num-examples": 3, "loss": 1.0}, {"num-examples": 2, "loss": 0.5}),
    "another metric name": contents(
        {"num-examples": 3, "loss": 1.0}, {"num-examples": 2, "acc": 0.5}
    ),
    "no weight": contents({"loss": 1.0}, {"loss": 0.5}),
    "a list weight": contents({"num-examples": [3]}, {"num-examples": [2]}),
    "another array name": contents(
        {"num-examples": 3}, {"num-examples": 2}, arrays=[{"w": np.ones(2)}, {"v": np.ones(2)}]
    ),
    "with a config record": contents(
        {"num-examples": 3}, {"num-examples": 2}, extra={"c": ConfigRecord({"a": 1})}
    ),
    "two metric records": contents(
        {"num-examples": 3}, {"num-examples": 2}, extra={"m2": MetricRecord({"x": 1.0})}
    ),
    "two array records": contents(
        {"num-examples": 3},
        {"num-examples": 2},
        extra={"a2": ArrayRecord({"z": Array(np.ones(1))})},
    ),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("check_arrays", [True, False], ids=["train", "evaluate"])
def test_reply_check_passes_exactly_what_flower_passes(case, check_arrays):
    replies_ = CASES[case]
    try:
        validate_message_reply_consistency(replies_, "num-examples", check_arrays)
        flower_ok = True
    except InconsistentMessageReplies:
        flower_ok = False
    assert consistent(replies_, "num-examples", check_arrays) == flower_ok


def test_strategy_raises_flowers_error_on_inconsistent_replies():
    msgs = [
        message(1, {"w": np.ones(2, np.float32)}, 3, 0.0),
        message(2, {"v": np.ones(2, np.float32)}, 2, 0.0),
    ]
    with pytest.raises(InconsistentMessageReplies) as theirs:
        flower.FedAvg().aggregate_train(1, msgs)
    with pytest.raises(InconsistentMessageReplies) as mine:
        ours.FedAvg().aggregate_train(1, msgs)
    assert str(mine.value) == str(theirs.value)


def test_train_metrics_are_flowers_default_bit_for_bit():
    replies_ = contents(
        {"num-examples": 3, "loss": 0.1, "acc": [0.5, 0.25], "steps": 7},
        {"num-examples": 5, "loss": 0.7, "acc": [0.125, 1.0], "steps": 2},
        {"num-examples": 1, "loss": 1 / 3, "acc": [0.3, 0.9], "steps": 11},
        extra={"more": MetricRecord({"extra": 2.5})},
    )
    want = aggregate_metricrecords(replies_, "num-examples")
    got = train_metrics(aggregate_metricrecords, replies_, "num-examples")
    assert got is not None
    assert list(got.keys()) == list(want.keys())
    for k in want:
        assert got[k] == want[k], k  # same arithmetic, same order: equal floats
    custom = train_metrics(lambda c, k: MetricRecord({"n": len(c)}), replies_, "num-examples")
    assert custom is not None and custom["n"] == 3


# ---- the legacy strategies share the path ---------------------------------------------------------


@needs_native
@pytest.mark.parametrize(
    "name,kwargs",
    [
        ("Krum", {"num_malicious_clients": 2}),
        ("Krum", {"num_malicious_clients": 2, "num_clients_to_keep": 3}),
        ("Bulyan", {"num_malicious_clients": 2}),
    ],
    ids=["krum", "multi-krum", "bulyan"],
)
def test_legacy_selections_off_the_views_are_the_stacked_references(name, kwargs):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from bcfl_engine.integrations import flower_legacy

    models, weights = far_outlier_replies(11, seed=9)

    def results():
        return [
            (
                None,
                FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(m.values())), int(w), {}),
            )
            for m, w in zip(models, weights, strict=True)
        ]

    fast = getattr(flower_legacy, name)(**kwargs)
    ref = getattr(flower_legacy, name)(**kwargs, backend="torch")
    got, _ = fast.aggregate_fit(1, results(), [])
    want, _ = ref.aggregate_fit(1, results(), [])
    assert all(key[0] < 11 for key in fast.stack_pool._buffers)  # never stacked all 11
    assert any(key[0] == 11 for key in ref.stack_pool._buffers)
    for g, w in zip(parameters_to_ndarrays(got), parameters_to_ndarrays(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        if name == "Krum" and "num_clients_to_keep" not in kwargs:
            np.testing.assert_array_equal(g, w)  # the same client, its own arrays
        else:
            np.testing.assert_allclose(g, w, rtol=1e-6)
