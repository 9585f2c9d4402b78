"""The legacy drop-ins (bcfl_engine.integrations.flower_legacy.FedAvg, ...) against Flower's
legacy strategies (flwr.server.strategy) on the same fit results."""

from __future__ import annotations

import logging

import numpy as np
import pytest

pytest.importorskip("flwr")
from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.server import strategy as flower
from test_flower_dropin import models

from bcfl_engine.errors import InvalidArgument
from bcfl_engine.integrations import flower_legacy as ours

STRATEGIES = {
    "FedAvg": ({}, {}),
    "FedMedian": ({}, {}),
    "FedTrimmedAvg": ({"beta": 0.2}, {}),
    "Krum": ({"num_malicious_clients": 1}, {}),
    "MultiKrum": ({"num_malicious_clients": 1, "num_clients_to_keep": 3}, {}),
    "Bulyan": ({"num_malicious_clients": 1}, {"to_keep": 0}),  # Flower's Krum needs to_keep
}
WEIGHTS = [3, 1, 4, 1, 5, 9, 2]


def mean_loss(results):
    return {"loss": sum(n * m["loss"] for n, m in results) / sum(n for n, _ in results)}


def results(clients, weights):
    """Fresh FitRes each call: Flower's legacy Bulyan pops from its list of results."""
    return [
        (
            None,
            FitRes(Status(Code.OK, ""), ndarrays_to_parameters(list(c.values())), w, {"loss": i}),
        )
        for i, (c, w) in enumerate(zip(clients, weights, strict=True))
    ]


def make(module, name: str, kwargs: dict, extra: dict):
    cls = getattr(module, "Krum" if name == "MultiKrum" else name)
    return cls(
        fit_metrics_aggregation_fn=mean_loss, **kwargs, **(extra if module is flower else {})
    )


def assert_same(got, want, *, int_buffer: bool, rtol: float) -> None:
    got, want = parameters_to_ndarrays(got), parameters_to_ndarrays(want)
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.shape == w.shape
        if g.dtype.kind == "i":
            if int_buffer:
                np.testing.assert_array_equal(g, np.rint(w))
        else:
            assert g.dtype == w.dtype
            np.testing.assert_allclose(g, w, rtol=rtol, atol=rtol)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(STRATEGIES))
def test_legacy_drop_in_matches_flower(name, dtype):
    clients = models(len(WEIGHTS), dtype, seed=21)
    kwargs, extra = STRATEGIES[name]
    got, metrics = make(ours, name, kwargs, extra).aggregate_fit(1, results(clients, WEIGHTS), [])
    want, want_metrics = make(flower, name, kwargs, extra).aggregate_fit(
        1, results(clients, WEIGHTS), []
    )
    # Flower's legacy in-place FedAvg loses a 0-d integer buffer, so it is not compared there
    assert_same(got, want, int_buffer=name != "FedAvg", rtol=1e-14 if dtype == "float64" else 1e-5)
    tracked = parameters_to_ndarrays(got)[2]
    assert tracked.shape == () and tracked.dtype == np.int64
    assert metrics == pytest.approx(want_metrics)


def test_legacy_bulyan_too_few_skips_or_lowers_f_where_flower_raises(caplog):
    clients = models(5, "float64", seed=22)
    w = WEIGHTS[:5]
    with pytest.raises(ValueError, match="4 \\* num_malicious \\+ 3"):
        flower.Bulyan(num_malicious_clients=1, to_keep=0).aggregate_fit(1, results(clients, w), [])
    with caplog.at_level(logging.WARNING):
        assert ours.Bulyan(num_malicious_clients=1).aggregate_fit(1, results(clients, w), []) == (
            None,
            {},
        )
    assert "5 replies are too few for Bulyan with f=1" in caplog.text
    got, _ = ours.Bulyan(num_malicious_clients=1, on_too_few="lower_f").aggregate_fit(
        1, results(clients, w), []
    )
    want, _ = flower.Bulyan(num_malicious_clients=0, to_keep=0).aggregate_fit(
        1, results(clients, w), []
    )
    assert_same(got, want, int_buffer=True, rtol=1e-14)
    with pytest.raises(InvalidArgument, match="first_aggregation_rule"):
        ours.Bulyan(first_aggregation_rule=lambda **kw: None)


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_legacy_nan_result_is_left_out_with_its_metrics(name, caplog):
    clients = models(8, "float32", seed=23)
    clients[3]["w"][0, 2] = np.nan
    weights = [*WEIGHTS, 6]
    kwargs, extra = STRATEGIES[name]
    with caplog.at_level(logging.WARNING):
        got, metrics = make(ours, name, kwargs, extra).aggregate_fit(
            1, results(clients, weights), []
        )
    assert "left out client 3: array '0' holds NaN or infinity" in caplog.text
    keep = [i for i in range(8) if i != 3]
    clean = results([clients[i] for i in keep], [weights[i] for i in keep])
    for (_, res), i in zip(clean, keep, strict=True):
        res.metrics["loss"] = i
    want, want_metrics = make(flower, name, kwargs, extra).aggregate_fit(1, clean, [])
    assert_same(got, want, int_buffer=name != "FedAvg", rtol=1e-5)
    assert metrics == pytest.approx(want_metrics)


@pytest.mark.parametrize("name", list(STRATEGIES))
@pytest.mark.parametrize("n", [1, 2, 3, 5])
@pytest.mark.parametrize("f", [0, 1])
def test_legacy_ours_never_raises_where_flower_carries_on(name, n, f):
    kwargs, extra = dict(STRATEGIES[name][0]), STRATEGIES[name][1]
    if "num_malicious_clients" in kwargs:
        kwargs["num_malicious_clients"] = f
    clients = models(n, "float64", seed=n + 10 * f)
    w = list(range(1, n + 1))
    got, _ = make(ours, name, kwargs, extra).aggregate_fit(1, results(clients, w), [])
    try:
        want, _ = make(flower, name, kwargs, extra).aggregate_fit(1, results(clients, w), [])
    except ValueError:  # Flower's legacy Bulyan below n >= 4f + 3: ours skips instead
        assert name == "Bulyan" and got is None
        return
    assert_same(got, want, int_buffer=name != "FedAvg", rtol=1e-14)
