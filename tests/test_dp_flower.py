"""DifferentialPrivacyServerSideFixedClipping on the engine against Flower's own wrapper: equal
without noise, the same noise scale with it, and Flower's wrapper around our strategies."""

from __future__ import annotations

import time

import numpy as np
import pytest

from bcfl_engine import dp as bdp
from bcfl_engine.errors import InvalidArgument

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.serverapp.strategy import DifferentialPrivacyServerSideFixedClipping as FlowerDP
from flwr.serverapp.strategy import FedAvg as FlowerFedAvg

from bcfl_engine.integrations import flower as bfl
from bcfl_engine.integrations.flower import DifferentialPrivacyServerSideFixedClipping as OurDP

N = 5
SHAPES = [(3, 4), (5,), (2,)]  # 19 parameters in three arrays


class Nodes:
    """The little of Flower's Grid that configure_train asks: N connected nodes."""

    run = None

    def get_node_ids(self):
        return list(range(11, 11 + N))


def configure(strategy, arrays: list[np.ndarray]) -> None:
    """configure_train of round 1 with the global ``arrays`` (a Message needs its run)."""
    from flwr.supercore.task_identity import TaskIdentity

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    try:
        record = ArrayRecord({f"p{j}": Array(a) for j, a in enumerate(arrays)})
        list(strategy.configure_train(1, record, ConfigRecord(), Nodes()))
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def reply(node: int, arrays: list[np.ndarray], weight: int) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({f"p{j}": Array(a) for j, a in enumerate(arrays)}),
            "metrics": MetricRecord({"num-examples": weight}),
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


def model(shapes, seed: int) -> list[np.ndarray]:
    g = np.random.default_rng(seed)
    return [g.standard_normal(s).astype(np.float32) for s in shapes]


def client_models(glob, seed: int) -> list[list[np.ndarray]]:
    """Global + an update per client with norms from 0.2 to 5 (C = 1 clips most of them)."""
    out = []
    for i, scale in enumerate(np.linspace(0.2, 5.0, N)):
        delta = model([a.shape for a in glob], seed + i)
        norm = np.sqrt(sum(float((d.astype(np.float64) ** 2).sum()) for d in delta))
        out.append(
            [a + (d * (scale / norm)).astype(np.float32) for a, d in zip(glob, delta, strict=True)]
        )
    return out


def run(strategy, glob, clients, weights):
    configure(strategy, glob)
    replies = [reply(11 + i, c, w) for i, (c, w) in enumerate(zip(clients, weights, strict=True))]
    arrays, _ = strategy.aggregate_train(1, replies)
    return [arrays[k].numpy() for k in arrays]


def assert_arrays_close(a, b, rtol=1e-5, atol=1e-6):
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        assert x.shape == y.shape and x.dtype == y.dtype
        np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


@pytest.mark.parametrize("weights", [[1] * N, [3, 1, 4, 1, 5]], ids=["uniform", "weighted"])
def test_without_noise_equal_to_flowers_wrapper(weights):
    glob = model(SHAPES, 1)
    clients = client_models(glob, 10)
    ours = run(OurDP(bfl.EngineFedAvg("mean"), 0.0, 1.0, N), glob, clients, weights)
    theirs = run(FlowerDP(FlowerFedAvg(), 0.0, 1.0, N), glob, clients, weights)
    assert_arrays_close(ours, theirs)
    # Clipping did something: the unclipped FedAvg is elsewhere.
    plain = run(FlowerFedAvg(), glob, clients, weights)
    assert max(float(np.abs(o - p).max()) for o, p in zip(ours, plain, strict=True)) > 1e-2


@pytest.mark.parametrize(
    "inner",
    [lambda: bfl.EngineFedAvg("mean"), lambda: bfl.FedAvg()],
    ids=["EngineFedAvg", "FedAvg"],
)
def test_flowers_wrapper_around_our_strategies(inner):
    glob = model(SHAPES, 2)
    clients = client_models(glob, 20)
    got = run(FlowerDP(inner(), 0.0, 1.0, N), glob, clients, [2, 7, 1, 8, 2])
    want = run(FlowerDP(FlowerFedAvg(), 0.0, 1.0, N), glob, clients, [2, 7, 1, 8, 2])
    assert_arrays_close(got, want)


def test_noise_scale_equals_flowers():
    # 40k coordinates: the sample std is within 1% of sigma at 3 standard errors.
    shapes = [(200, 150), (10000,)]
    glob = model(shapes, 3)
    clients = client_models(glob, 30)
    z, c, w = 1.3, 1.0, [1] * N
    clean = run(OurDP(bfl.EngineFedAvg("mean"), 0.0, c, N), glob, clients, w)
    ours = run(OurDP(bfl.EngineFedAvg("mean"), z, c, N), glob, clients, w)
    theirs = run(FlowerDP(FlowerFedAvg(), z, c, N), glob, clients, w)
    sigma = z * c / N
    for got in (ours, theirs):
        noise = np.concatenate(
            [(g.astype(np.float64) - k).reshape(-1) for g, k in zip(got, clean, strict=True)]
        )
        assert abs(noise.std() / sigma - 1) < 0.02, noise.std() / sigma
        assert abs(noise.mean()) < 4 * sigma / np.sqrt(noise.size)


def test_generator_reproduces_and_replies_are_left_as_they_came():
    glob = model(SHAPES, 4)
    clients = client_models(glob, 40)
    a = run(
        OurDP(bfl.EngineFedAvg("mean"), 1.0, 1.0, N, generator=bdp.NoiseGenerator(3)),
        glob,
        clients,
        [1] * N,
    )
    b = run(
        OurDP(bfl.EngineFedAvg("mean"), 1.0, 1.0, N, generator=bdp.NoiseGenerator(3)),
        glob,
        clients,
        [1] * N,
    )
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    strategy = OurDP(bfl.EngineFedAvg("mean"), 1.0, 1.0, N)
    configure(strategy, glob)
    replies = [reply(11 + i, c, 1) for i, c in enumerate(clients)]
    strategy.aggregate_train(1, replies)
    for r, c in zip(replies, clients, strict=True):
        assert all(np.array_equal(r.content["arrays"][f"p{j}"].numpy(), c[j]) for j in range(3))


def test_refuses_bad_arguments_and_an_unconfigured_round():
    with pytest.raises(InvalidArgument, match="clipping_norm"):
        OurDP(bfl.EngineFedAvg("mean"), 1.0, 0.0, N)
    with pytest.raises(InvalidArgument, match="Strategy"):
        OurDP(object(), 1.0, 1.0, N)
    glob = model(SHAPES, 5)
    replies = [reply(11 + i, c, 1) for i, c in enumerate(client_models(glob, 50))]
    with pytest.raises(InvalidArgument, match="configure_train"):
        OurDP(bfl.EngineFedAvg("mean"), 1.0, 1.0, N).aggregate_train(1, replies)


class Clients:
    """The little of Flower's ClientManager that the legacy configure_fit asks."""

    def num_available(self) -> int:
        return N

    def sample(self, num_clients, min_num_clients=None, criterion=None):
        return [object() for _ in range(N)]


@pytest.mark.parametrize("ours", ["LegacyEngineFedAvg", "FedAvg"])
def test_flowers_legacy_wrapper_around_our_legacy_strategies(ours):
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays
    from flwr.server.strategy import DifferentialPrivacyServerSideFixedClipping as LegacyDP
    from flwr.server.strategy import FedAvg as LegacyFedAvg

    from bcfl_engine.integrations import flower_legacy

    glob = model(SHAPES, 6)
    clients = client_models(glob, 60)

    def run_legacy(inner):
        strategy = LegacyDP(inner, 0.0, 1.0, N)
        list(strategy.configure_fit(1, ndarrays_to_parameters(glob), Clients()))
        res = [
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(c), w, {}))
            for c, w in zip(clients, [2, 7, 1, 8, 2], strict=True)
        ]
        params, _ = strategy.aggregate_fit(1, res, [])
        return parameters_to_ndarrays(params)

    got = run_legacy(getattr(flower_legacy, ours)())
    assert_arrays_close(got, run_legacy(LegacyFedAvg()))
