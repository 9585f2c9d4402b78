"""The .npy reader and writer of the Flower path, the stacking pool reused across rounds, and
the streamed weighted mean, each against numpy's own .npy functions or the stacked path."""

from __future__ import annotations

import io
import logging

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
from flwr.common import Parameters, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.serverapp import strategy as flower
from test_flower_dropin import message

from bcfl_engine.integrations import flower as ours
from bcfl_engine.integrations.flower_arrays import Stack, weighted_mean
from bcfl_engine.integrations.flower_legacy_dropin import to_parameters
from bcfl_engine.integrations.flower_npy import (
    StackPool,
    npy_bytes,
    npy_view,
    parse_npy_header,
    tensors_to_arrays,
)
from bcfl_engine.integrations.flower_stream import streamed_mean


def saved(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


rng = np.random.default_rng(7)
PLAIN = [
    np.float32(rng.standard_normal()).reshape(()),  # 0-d float
    np.array(12, np.int64),  # 0-d int buffer (num_batches_tracked)
    np.array(True),
    rng.standard_normal(5).astype(np.float32),
    rng.standard_normal((3, 4)).astype(np.float64),
    rng.standard_normal((2, 3, 4)).astype(np.float16),
    rng.integers(-100, 100, (4, 5)).astype(np.int8),
    rng.integers(0, 255, (7,)).astype(np.uint8),
    rng.integers(-(2**40), 2**40, (3,)).astype(np.int64),
    rng.integers(0, 2**31, (2, 2)).astype(np.uint32),
    rng.standard_normal((3, 2)).astype(">f4"),  # big-endian
    rng.standard_normal((2, 5)).astype(">f8"),
    np.arange(6, dtype=">i8").reshape(2, 3),
    (rng.standard_normal(3) + 1j * rng.standard_normal(3)).astype(np.complex64),
    np.zeros((0, 4), np.float32),  # empty
    np.zeros((3, 0, 2), np.float64),
    np.arange(24, dtype=np.float32).reshape(2, 3, 4)[:, ::2],  # not contiguous
]


@pytest.mark.parametrize("a", PLAIN, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_view_reads_what_np_load_reads_without_a_copy(a: np.ndarray) -> None:
    data = saved(a)
    want = np.load(io.BytesIO(data), allow_pickle=False)
    header = parse_npy_header(data)
    assert header is not None
    dtype, shape, offset = header
    assert (dtype, shape) == (want.dtype, want.shape)
    assert len(data) - offset == want.nbytes
    got = npy_view(data)
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_array_equal(got, want)
    assert not got.flags.writeable  # a view over the reply's bytes, never written
    assert not got.flags.owndata


@pytest.mark.parametrize("a", PLAIN, ids=lambda a: f"{a.dtype.str}{a.shape}")
def test_npy_bytes_is_np_save_for_c_order_and_loads_back(a: np.ndarray) -> None:
    out = npy_bytes(a)
    back = np.load(io.BytesIO(out), allow_pickle=False)
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)
    if a.flags.c_contiguous:
        assert out == saved(a)


def test_unusual_headers_fall_back_to_np_load() -> None:
    fortran = np.asfortranarray(rng.standard_normal((3, 4)))
    structured = np.zeros(3, dtype=[("a", "<i4"), ("b", "<f8")])
    for a in (fortran, structured):
        data = saved(a)
        assert parse_npy_header(data) is None
        np.testing.assert_array_equal(npy_view(data), a)
    good = saved(np.arange(5, dtype=np.float32))
    assert parse_npy_header(good[:-4]) is None  # truncated data
    assert parse_npy_header(b"not an npy file at all") is None
    assert parse_npy_header(good[:6] + b"\x09" + good[7:]) is None  # unknown version
    extra = good.replace(b"'shape': (5,), }" + b" " * 6, b"'shape': (5,), 'x': 1}")
    assert len(extra) == len(good) and parse_npy_header(extra) is None  # an unknown key
    with pytest.raises(ValueError):
        npy_view(good[:-4])  # np.load's own error for a truncated file


def test_legacy_tensors_read_and_written_as_flower_does() -> None:
    arrays = [a for a in PLAIN if a.flags.c_contiguous]
    params = ndarrays_to_parameters(arrays)
    for got, want in zip(tensors_to_arrays(params.tensors), arrays, strict=True):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got, want)
    ours_params = to_parameters(arrays)
    assert isinstance(ours_params, Parameters) and ours_params.tensor_type == params.tensor_type
    assert ours_params.tensors == params.tensors
    for got, want in zip(parameters_to_ndarrays(ours_params), arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_pool_reuses_one_pair_per_size_and_evicts_the_oldest() -> None:
    pool = StackPool(max_keys=2)
    a = pool.get(3, 10, 2)
    assert a[0].shape == (3, 10) and a[1].shape == (3, 2)
    assert pool.get(3, 10, 2)[0] is a[0]
    b = pool.get(4, 10, 0)
    assert b[0] is not a[0] and len(pool) == 2
    pool.get(5, 1, 1)  # evicts (3, 10, 2), the least recently used
    assert len(pool) == 2 and pool.get(3, 10, 2)[0] is not a[0]
    arrays = [[np.full(10, i, np.float32), np.full(2, i, np.float64)] for i in range(3)]
    stack = Stack.of(arrays, pool)
    assert np.shares_memory(stack.x32.numpy(), pool.get(3, 10, 2)[0])


def model(seed: int, n: int = 6) -> list[dict[str, np.ndarray]]:
    g = np.random.default_rng(seed)
    return [
        {
            "w": g.standard_normal((4, 5)).astype(np.float32),
            "b": g.standard_normal(5).astype(np.float32),
            "d": g.standard_normal(3),  # float64
            "steps": np.array(seed * 10 + i, np.int64),  # 0-d int
        }
        for i in range(n)
    ]


def replies(clients: list[dict[str, np.ndarray]]) -> list:
    return [message(i + 1, c, 1 + i, 0.1 * i) for i, c in enumerate(clients)]


@pytest.mark.parametrize("name", ["FedAvg", "FedMedian", "Krum", "FedTrimmedAvg"])
def test_a_result_is_never_overwritten_by_the_next_round(name: str) -> None:
    kw = {"Krum": {"num_malicious_nodes": 1}, "FedTrimmedAvg": {"beta": 0.2}}.get(name, {})
    s = getattr(ours, name)(**kw)
    first, _ = s.aggregate_train(1, replies(model(1)))
    assert first is not None
    kept = {k: np.array(v.numpy(), copy=True) for k, v in first.items()}
    views = {k: v.numpy() for k, v in first.items()}
    for r in (2, 3):
        s.aggregate_train(r, replies(model(r)))
    for k, v in first.items():
        np.testing.assert_array_equal(v.numpy(), kept[k])
        np.testing.assert_array_equal(views[k], kept[k])
    assert len(s.stack_pool) <= 1  # one size, one pair of matrices for every round
    if len(s.stack_pool):
        x32, x64 = s.stack_pool.get(6, 25, 4)
        assert x32.shape == (6, 25) and x64.shape == (6, 4)
        for v in views.values():
            assert not np.shares_memory(v, x32) and not np.shares_memory(v, x64)


def test_pool_buffer_reused_across_rounds_by_a_stacking_rule() -> None:
    s = ours.FedMedian()
    s.aggregate_train(1, replies(model(1)))
    buf = s.stack_pool.get(6, 25, 4)[0]
    second, _ = s.aggregate_train(2, replies(model(2)))
    assert s.stack_pool.get(6, 25, 4)[0] is buf
    clients = model(2)
    want = np.median(np.stack([c["w"] for c in clients]), axis=0)
    np.testing.assert_allclose(second["w"].numpy(), want, rtol=1e-6)


def test_streamed_mean_matches_the_stacked_mean_and_flower() -> None:
    clients = model(5, n=9)
    arrays = [[c[k] for k in ("w", "b", "d", "steps")] for c in clients]
    weights = [float(3 + i) for i in range(9)]
    got = streamed_mean(arrays, weights)
    assert got is not None
    want = weighted_mean(Stack.of(arrays), weights, backend="torch")
    for g, w in zip(got, want, strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got[1], want[1], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(got[2], want[2])  # float64: Flower's arithmetic, exact
    np.testing.assert_array_equal(got[3], want[3])
    ref = torch.tensor(np.stack([c["w"] for c in clients]), dtype=torch.float64)
    wt = torch.tensor(weights, dtype=torch.float64) / sum(weights)
    np.testing.assert_allclose(got[0], (wt[:, None, None] * ref).sum(0).numpy(), rtol=1e-5)
    # Flower's own FedAvg on the same replies, through the drop-in's streamed path
    msgs = [message(i + 1, c, weights[i], 0.0) for i, c in enumerate(clients)]
    theirs, _ = flower.FedAvg().aggregate_train(1, msgs)
    msgs = [message(i + 1, c, weights[i], 0.0) for i, c in enumerate(clients)]
    mine, _ = ours.FedAvg().aggregate_train(1, msgs)
    assert theirs is not None and mine is not None
    np.testing.assert_allclose(mine["w"].numpy(), theirs["w"].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mine["d"].numpy(), theirs["d"].numpy())


def test_streamed_mean_declines_what_the_stacked_path_must_handle() -> None:
    arrays = [[np.ones(4, np.float32), np.ones(2)] for _ in range(3)]
    assert streamed_mean(arrays, [1.0, 0.0, 2.0]) is None  # a zero weight
    bad = [list(a) for a in arrays]
    bad[1] = [np.array([1, np.nan, 1, 1], np.float32), np.ones(2)]
    assert streamed_mean(bad, [1.0, 1.0, 1.0]) is None  # NaN: the caller names it
    inf64 = [list(a) for a in arrays]
    inf64[2] = [np.ones(4, np.float32), np.array([1.0, np.inf])]
    assert streamed_mean(inf64, [1.0, 1.0, 1.0]) is None
    small = [[np.ones(4, np.int8)] for _ in range(3)]
    assert streamed_mean(small, [1.0, 1.0, 1.0]) is None  # not float32: stacked path
    assert streamed_mean(arrays, [1.0, 1.0, 1.0]) is not None


def test_fedavg_with_a_nan_reply_leaves_it_out_and_names_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clients = model(3)
    clients[2]["b"] = clients[2]["b"].copy()
    clients[2]["b"][1] = np.nan
    s = ours.EngineFedAvg("mean")
    with caplog.at_level(logging.WARNING):
        out, _ = s.aggregate_train(1, replies(clients))
    assert out is not None and np.isfinite(out["b"].numpy()).all()
    assert "node 3" in caplog.text and "'b'" in caplog.text
    rest = [c for i, c in enumerate(clients) if i != 2]
    w = np.array([1 + i for i in range(6) if i != 2], np.float64)
    want = (w[:, None] * np.stack([c["b"] for c in rest])).sum(0) / w.sum()
    np.testing.assert_allclose(out["b"].numpy(), want, rtol=1e-5)
    assert out["steps"].numpy().shape == () and out["steps"].numpy().dtype == np.int64


@pytest.mark.parametrize("rule", ["krum", "median", "mean"])
def test_last_result_arrays_never_alias_the_pool(rule: str) -> None:
    s = ours.EngineFedAvg(rule, f=0 if rule == "mean" else 1)
    s.aggregate_train(1, replies(model(1)))
    first = s.last_result
    kept = [np.array(a, copy=True) for a in first]
    s.aggregate_train(2, replies(model(2)))
    assert s.last_result is not first
    for a, k in zip(first, kept, strict=True):
        np.testing.assert_array_equal(a, k)
        for buf in s.stack_pool.get(6, 25, 4):
            assert not np.shares_memory(a, buf)


def test_fedavg_streams_without_the_pool_and_stacks_only_to_screen_a_nan() -> None:
    s = ours.FedAvg()
    assert s.aggregate_train(1, replies(model(1)))[0] is not None
    assert len(s.stack_pool) == 0  # streamed: no batch
    clients = model(2)
    clients[0]["w"] = np.full_like(clients[0]["w"], np.inf)
    out, _ = s.aggregate_train(2, replies(clients))
    assert out is not None and np.isfinite(out["w"].numpy()).all()
    assert len(s.stack_pool) == 1  # the stacked path named and left out the bad reply


def test_legacy_fedavg_streams_and_matches_flower() -> None:
    from flwr.common import Code, FitRes, Status
    from flwr.server import strategy as legacy

    from bcfl_engine.integrations import flower_legacy as ours_legacy

    clients = model(4)
    keys = ("w", "b", "d")

    def results() -> list:
        return [
            (None, FitRes(Status(Code.OK, ""), to_parameters([c[k] for k in keys]), 2 + i, {}))
            for i, c in enumerate(clients)
        ]

    s = ours_legacy.FedAvg()
    got, _ = s.aggregate_fit(1, results(), [])
    want, _ = legacy.FedAvg().aggregate_fit(1, results(), [])
    assert len(s.stack_pool) == 0
    for g, w in zip(parameters_to_ndarrays(got), parameters_to_ndarrays(want), strict=True):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_header_cache_reads_memoryviews_version_2_and_rejects_what_it_does_not_know() -> None:
    a = rng.standard_normal((3, 5)).astype(np.float32)
    good = saved(a)
    for data in (memoryview(good), bytearray(good), memoryview(good).cast("B", (len(good),))):
        np.testing.assert_array_equal(npy_view(data), a)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, a, version=(2, 0))
    v2 = buf.getvalue()
    assert v2[6] == 2
    header = parse_npy_header(v2)
    assert header is not None and header[:2] == (np.dtype(np.float32), (3, 5))
    np.testing.assert_array_equal(npy_view(v2), a)
    # the same header with a wrong magic, or its length field past the end: not .npy
    assert parse_npy_header(b"\x93NUMPX" + good[6:]) is None
    assert parse_npy_header(good[:8] + b"\xff\xff" + good[10:]) is None
    # a cached header does not vouch for a body of another length
    assert parse_npy_header(good) is not None and parse_npy_header(good + b"\0" * 4) is None
