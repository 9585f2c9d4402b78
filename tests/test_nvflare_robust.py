"""RobustAggregator against NVFlare's InTimeAccumulateWeightedAggregator and the rules' torch
references, driven as NVFlare's server drives it (fobs.loads + accept + aggregate)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("nvflare")

from helpers import assert_close
from nvflare.apis.dxo import DXO, DataKind, MetaKey, from_shareable
from nvflare.apis.fl_constant import ReservedKey, ReturnCode
from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import (
    InTimeAccumulateWeightedAggregator as Stock,
)
from nvflare.app_common.app_constant import AppConstants
from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize
from nvflare_msgs import message, run, server

from bcfl_engine import rules
from bcfl_engine.errors import InvalidArgument, PreconditionError
from bcfl_engine.integrations.nvflare_robust import RobustAggregator

nvflare_fobs_initialize()
SHAPES = {"conv.weight": (4, 3, 3), "conv.bias": (4,), "fc.weight": (7, 5)}


def weights(seed: int, scale: float = 1.0) -> dict[str, Any]:
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {k: (rng.standard_normal(s) * scale).astype(np.float32)
                           for k, s in SHAPES.items()}  # fmt: skip
    out["bn.num_batches_tracked"] = np.array(7 + seed, dtype=np.int64)
    return out


def flat(d: dict[str, Any]) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(d[k], dtype=np.float32)).reshape(-1)
                      for k in [*SHAPES, "bn.num_batches_tracked"]])  # fmt: skip


def msgs(updates: list[dict], steps: list[int] | None = None, **kw: Any) -> list[bytes]:
    steps = steps or [1] * len(updates)
    return [message(u, f"site-{i}", steps=s, algorithm=None, **kw)
            for i, (u, s) in enumerate(zip(updates, steps, strict=True))]  # fmt: skip


def test_mean_is_nvflares_weighted_mean() -> None:
    """rule="mean": NVFlare's weighted mean (weights = aggregation weight x steps), to float32
    rounding (NVFlare sums in arrival order; the engine's mean reassociates)."""
    ups = [weights(i) for i in range(5)]
    m = msgs(ups, steps=[1, 3, 2, 1, 4])
    kw = {"aggregation_weights": {"site-1": 0.5, "site-4": 2.0}}
    fa, a = run(Stock, m, expected_data_kind=DataKind.WEIGHTS, **kw)
    fb, b = run(RobustAggregator, m, rule="mean", expected_data_kind=DataKind.WEIGHTS, **kw)
    assert fa == fb == [True] * 5
    assert list(a.data) == list(b.data) and a.data_kind == b.data_kind
    for k, v in a.data.items():
        assert b.data[k].shape == np.shape(v), k
        if k == "bn.num_batches_tracked":  # NVFlare returns a float64; ours stays int64, rounded
            assert b.data[k].dtype == np.int64 and int(b.data[k]) == round(float(v))
            continue
        assert b.data[k].dtype == v.dtype == np.float32
        assert_close(torch.from_numpy(b.data[k]), torch.from_numpy(v), 1e-5, 1e-6)


@pytest.mark.parametrize(
    "rule, f, params",
    [
        ("median", 0, {}),
        ("trimmed_mean", 1, {}),
        ("krum", 1, {}),
        ("multi_krum", 1, {"m": 3}),
        ("geometric_median", 0, {}),
    ],
)
def test_rule_matches_its_reference_and_resists_an_outlier(rule: str, f: int, params: dict) -> None:
    ups = [weights(i) for i in range(6)]
    ups[2] = weights(99, scale=1e4)  # one Byzantine client
    flags, out = run(
        RobustAggregator,
        msgs(ups),
        rule=rule,
        f=f,
        params=params,
        expected_data_kind=DataKind.WEIGHTS,
    )
    assert flags == [True] * 6
    x = torch.stack([flat(u) for u in ups])
    ref = rules.get(rule).reference
    kw = dict(params, **({"f": f} if rules.get(rule).takes_f else {}))
    want = ref(x, **kw)
    got = flat(out.data)
    assert_close(got[:-1], want[:-1], 1e-4, 1e-5)
    assert int(out.data["bn.num_batches_tracked"]) == round(float(want[-1]))
    assert (
        out.data["conv.weight"].shape == (4, 3, 3) and out.data["conv.weight"].dtype == np.float32
    )
    _, mean = run(Stock, msgs(ups), expected_data_kind=DataKind.WEIGHTS)
    assert np.abs(flat(mean.data).numpy()).max() > 100 > np.abs(got.numpy()[:-1]).max()


def test_rejections_as_nvflare(caplog: pytest.LogCaptureFixture) -> None:
    ups = [weights(i) for i in range(3)]
    good = msgs(ups)
    nan = weights(5)
    nan["fc.weight"][1, 2] = np.nan
    shape = weights(6)
    shape["fc.weight"] = shape["fc.weight"][:, :4]
    bad_stock = [
        message(weights(7), "site-9", round_=2, algorithm=None),  # wrong round
        message(weights(8), "site-0", algorithm=None),  # duplicate contributor
        message(weights(8), "site-8", kind=DataKind.WEIGHT_DIFF, algorithm=None),  # data kind
        message(weights(8), "site-7", rc=ReturnCode.EXECUTION_EXCEPTION, algorithm=None),
    ]
    bad_ours = [message(nan, "site-5", algorithm=None), message(shape, "site-6", algorithm=None)]
    fa, _ = run(Stock, good + bad_stock, expected_data_kind=DataKind.WEIGHTS)
    with caplog.at_level(logging.ERROR):
        fb, out = run(RobustAggregator, good + bad_stock + bad_ours, rule="median",
                      expected_data_kind=DataKind.WEIGHTS)  # fmt: skip
    assert fa == fb[: len(fa)] == [True] * 3 + [False] * 4
    assert fb[len(fa) :] == [False, False]
    errors = [
        r.getMessage() for r in caplog.records if "discarding the contribution" in r.getMessage()
    ]
    assert any("site-5" in e and "NaN" in e for e in errors), errors
    assert any("site-6" in e and "'fc.weight' has shape (7, 4)" in e for e in errors), errors
    want = rules.get("median").reference(torch.stack([flat(u) for u in ups]))
    assert_close(flat(out.data)[:-1], want[:-1])


def test_too_few_for_f_still_closes_the_round(caplog: pytest.LogCaptureFixture) -> None:
    """Krum with f=2 needs n >= 2f + 3 = 7: with 5 it aggregates with f=1 and says so."""
    ups = [weights(i) for i in range(5)]
    with caplog.at_level(logging.WARNING):
        flags, out = run(RobustAggregator, msgs(ups), rule="krum", f=2,
                         expected_data_kind=DataKind.WEIGHTS)  # fmt: skip
    assert flags == [True] * 5
    assert any(
        "krum requires" in r.getMessage() and "f=1" in r.getMessage() for r in caplog.records
    )
    want = rules.get("krum").reference(torch.stack([flat(u) for u in ups]), f=1)
    assert_close(flat(out.data)[:-1], want[:-1])


def test_metrics_and_meta_as_nvflare() -> None:
    """Values that are not arrays take NVFlare's weighted mean; DXO meta as NVFlare's."""
    ups = [{**weights(i), "loss": float(i)} for i in range(3)]
    _, a = run(Stock, msgs(ups), expected_data_kind=DataKind.WEIGHTS)
    _, b = run(RobustAggregator, msgs(ups), rule="median", expected_data_kind=DataKind.WEIGHTS)
    assert b.data["loss"] == a.data["loss"] == 1.0
    assert b.meta == a.meta and MetaKey.PROCESSED_ALGORITHM not in b.meta


def test_bad_arguments_are_refused_at_construction() -> None:
    with pytest.raises(InvalidArgument):
        RobustAggregator(rule="nnm")
    with pytest.raises(InvalidArgument):
        RobustAggregator(rule="median", f=-1)
    with pytest.raises(PreconditionError):
        RobustAggregator(rule="mean", f=1)


def test_a_round_with_no_contribution_is_nvflares() -> None:
    _, a = run(Stock, [], expected_data_kind=DataKind.WEIGHTS)
    _, b = run(RobustAggregator, [], rule="median", expected_data_kind=DataKind.WEIGHTS)
    assert a.data == b.data == {} and a.meta == b.meta


def test_torch_tensors_stay_tensors() -> None:
    """PT jobs that send tensors: the aggregate's arrays are tensors of the same dtype. (The
    shareables are handed over as objects: NVFlare streams tensors in its own transport, and a
    bare fobs.dumps/loads round trip here returns them empty.)"""
    ups = [{k: torch.from_numpy(v) for k, v in weights(i).items()} for i in range(3)]
    agg, fl_ctx = server(RobustAggregator, rule="median", expected_data_kind=DataKind.WEIGHTS)
    for i, u in enumerate(ups):
        shareable = DXO(DataKind.WEIGHTS, u).to_shareable()
        shareable.set_peer_props({ReservedKey.IDENTITY_NAME: f"site-{i}"})
        shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, 0)
        assert agg.accept(shareable, fl_ctx)
    out = from_shareable(agg.aggregate(fl_ctx))
    assert isinstance(out.data["fc.weight"], torch.Tensor)
    assert out.data["fc.weight"].dtype == torch.float32
    want = rules.get("median").reference(torch.stack([flat(u) for u in ups]))
    assert_close(flat(out.data)[:-1], want[:-1])


def test_arrays_in_another_order_are_the_same_update() -> None:
    ups = [weights(i) for i in range(3)]
    ups[1] = dict(reversed(list(ups[1].items())))
    flags, out = run(
        RobustAggregator, msgs(ups), rule="median", expected_data_kind=DataKind.WEIGHTS
    )
    assert flags == [True] * 3
    want = rules.get("median").reference(torch.stack([flat(u) for u in ups]))
    assert_close(flat(out.data)[:-1], want[:-1])
