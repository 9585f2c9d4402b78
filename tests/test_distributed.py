"""bcfl_engine.distributed: 2 and 3 gloo processes on 127.0.0.1 against one process, bit for bit.

Each world size is one spawn that runs every case (starting processes costs seconds; the
cases cost milliseconds). Shapes: n and d not multiples of the world size, a rank with no
rows (3 ranks), a rank with no columns (d = 600: two 256-column blocks for 3 ranks).
"""

from __future__ import annotations

import dataclasses
import importlib
import itertools
import os
import re
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import run_ranks

import bcfl_engine
from bcfl_engine import distributed
from bcfl_engine.backends import _load_native, dispatch
from bcfl_engine.distributed_comm import (
    COLUMN_ALIGN,
    Layout,
    column_ranges,
    comm_device,
    device_for_backend,
    to_columns,
)
from bcfl_engine.distributed_distances import _torch_distances
from bcfl_engine.errors import (
    BackendUnavailable,
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
    PeerFailure,
)
from bcfl_engine.he.ckks_sum import ckks_sum as ckks_sum_one
from bcfl_engine.he.ckks_sum import ckks_sum_reference
from bcfl_engine.rules._distances import REFERENCE_BLOCK, sq_dists_reference

krum_select = importlib.import_module("bcfl_engine.rules.krum").krum_select

NATIVE = _load_native()[1] is None
BACKENDS = ["torch"] + (["native"] if NATIVE else [])

# (case id, rule, f, params, weighted, n, d, dtype)
CASES = [
    ("mean", "mean", 0, {}, False, 11, 1001, torch.float32),
    ("mean-weighted", "mean", 0, {}, True, 11, 1001, torch.float32),
    ("mean-bf16", "mean", 0, {}, True, 10, 257, torch.bfloat16),
    ("median-odd", "median", 2, {}, False, 11, 1001, torch.float32),
    ("median-even", "median", 3, {}, False, 10, 1001, torch.float32),
    ("median-f16", "median", 0, {}, False, 7, 130, torch.float16),
    ("trimmed_mean", "trimmed_mean", 2, {}, False, 11, 1001, torch.float32),
    ("krum", "krum", 2, {}, False, 11, 1001, torch.float32),
    ("multi_krum", "multi_krum", 2, {}, False, 11, 1001, torch.float32),
    ("bulyan", "bulyan", 2, {}, False, 11, 1001, torch.float32),
    ("bulyan-f1", "bulyan", 1, {}, False, 10, 4099, torch.float32),
    ("multi_krum-m3", "multi_krum", 1, {"m": 3}, False, 10, 4099, torch.float32),
    # Three blocks of the distances' 16384-column grid: the torch backend's distances split.
    ("krum-wide", "krum", 2, {}, False, 11, 50_000, torch.float32),
    ("multi_krum-wide", "multi_krum", 2, {}, False, 11, 50_000, torch.float32),
    ("bulyan-wide", "bulyan", 2, {}, False, 11, 40_000, torch.float32),
    ("geometric_median", "geometric_median", 2, {}, True, 11, 40_000, torch.float32),
    (
        "geometric_median-7",
        "geometric_median",
        1,
        {"max_iter": 7, "tol": 0.0},
        False,
        10,
        1001,
        torch.float32,
    ),
    # Two column blocks: with 3 ranks the last holds no column.
    ("mean-d600", "mean", 0, {}, True, 5, 600, torch.float32),
    ("median-d600", "median", 1, {}, False, 5, 600, torch.float32),
    ("krum-d600", "krum", 1, {}, False, 5, 600, torch.float32),
    # Fewer columns than one block: one rank holds them all.
    ("median-d2", "median", 1, {}, False, 5, 2, torch.float32),
    # Values near the float32 maximum in the first columns (rank 0's): their float32 sums
    # overflow, and the rule takes its float64 path (the mean: for every column, on every rank).
    # Unweighted n = 10: the float32 sum of ten FLT_MAX * float32(1/10) rounds past FLT_MAX
    # (checked below for each backend).
    ("mean-huge", "mean", 0, {}, False, 10, 1001, torch.float32),
    ("trimmed_mean-huge", "trimmed_mean", 1, {}, False, 11, 1001, torch.float32),
    ("median-huge", "median", 0, {}, False, 10, 1001, torch.float32),
    # Centered clipping: the column-local center, n distances folded per iteration. 50_003
    # columns are three 16384-column blocks and a tail: every one of 3 ranks holds columns.
    ("centered_clipping", "centered_clipping", 2, {"tau": 5.0}, False, 11, 50_003, torch.float32),
    (
        "centered_clipping-center",
        "centered_clipping",
        1,
        {"tau": 50.0, "n_iter": 2, "center": torch.linspace(0.5, 1.5, 40_001)},
        False,
        11,
        40_001,
        torch.float32,
    ),
    ("centered_clipping-bf16", "centered_clipping", 1, {}, False, 7, 1001, torch.bfloat16),
]
HUGE = torch.finfo(torch.float32).max
# The distributed geometric median runs the torch reference's step only (its docstring says why).
COMBOS = [
    (c, b)
    for c in CASES
    for b in BACKENDS
    if c[1] not in ("geometric_median", "centered_clipping") or b == "torch"
]
# pre= before a rule, against bcfl_engine.aggregate(x, rule, pre=..., backend="torch"); n and d
# multiples of neither 2 nor 3:
# (case id, rule, f, params, pre, weighted, n, d, dtype). Norms of the rows are ~200 at
# d = 40_001 (the outliers' ~1000): max_norm 150 clips every row, 500 only the outliers.
PRE_CASES = [
    ("nnm+krum", "krum", 2, {}, ["nnm"], False, 11, 50_003, torch.float32),
    ("clip+mean", "mean", 0, {}, [("clip", {"max_norm": 150.0})], True, 11, 40_001, torch.float32),
    (
        "clip+nnm+median",
        "median",
        2,
        {},
        [("clip", {"max_norm": 500.0}), "nnm"],
        False,
        13,
        33_001,
        torch.bfloat16,
    ),
    ("nnm-f1+bulyan", "bulyan", 2, {}, [("nnm", {"f": 1})], False, 11, 50_003, torch.float32),
    ("nnm+trimmed_mean-d1001", "trimmed_mean", 1, {}, ["nnm"], False, 11, 1001, torch.float32),
    (
        "clip+centered_clipping",
        "centered_clipping",
        1,
        {"tau": 20.0, "n_iter": 2},
        [("clip", {"max_norm": 150.0, "inplace": True})],
        False,
        7,
        40_001,
        torch.float32,
    ),
    (
        "nnm+clip+geometric_median",
        "geometric_median",
        2,
        {"max_iter": 5},
        ["nnm", ("clip", {"max_norm": 150.0})],
        True,
        11,
        40_001,
        torch.float16,
    ),
    (
        "clip+multi_krum",
        "multi_krum",
        1,
        {"m": 4},
        [("clip", {"max_norm": 150.0})],
        False,
        13,
        50_003,
        torch.float32,
    ),
]


def _data(n: int, d: int, dtype: torch.dtype, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g) * 0.1 + 1.0  # a common component, as FL updates share
    x[-2:] += 5.0 * torch.randn(2, d, generator=g)  # two outliers for the robust rules
    w = torch.rand(n, generator=g, dtype=torch.float64) * 10 + 0.5
    if 0 <= seed < len(CASES) and CASES[seed][0].endswith("-huge"):
        x[:, :7] = HUGE
    return x.to(dtype), w


def _residues(n: int):
    """Residues ``[n, C=1, 2, K=5, N=43]`` near their primes (the largest below 2^60), weights up
    to 2^64 - 1: a plain int64 sum over ranks would overflow."""
    primes = [2**60 - 173, 2**60 - 257, 2**59 - 55, 2**45 - 55, 2**30 - 35]
    g = torch.Generator().manual_seed(7)
    q = torch.tensor(primes)[None, None, None, :, None]
    r = torch.randint(0, 2**62, (n, 1, 2, 5, 43), generator=g) % q
    r[:, :, :, :, :8] = (q - 1).expand(n, 1, 2, 5, 8)
    weights = [2**64 - 1 - i for i in range(n)]
    return r, primes, weights


def _split(n: int, world: int) -> list[tuple[int, int]]:
    """Uneven row shards: with 2 ranks a third and two thirds, with 3 the middle one empty."""
    if world == 3:
        a = n // 2
        return [(0, a), (a, a), (a, n)]
    a = n // 3
    return [(0, a), (a, n)]


def _init(rank: int, world: int, port: int, timeout_s: float) -> None:
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=timeout_s),
    )


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    _init(rank, world, port, 60)
    results = {}
    for backend in BACKENDS:
        for i, (cid, rule, f, params, weighted, n, d, dtype) in enumerate(CASES):
            if (CASES[i], backend) not in COMBOS:
                continue
            x, w = _data(n, d, dtype, seed=i)
            a, b = _split(n, world)[rank]
            out = distributed.aggregate(
                x[a:b],
                rule=rule,
                f=f,
                weights=w[a:b] if weighted else None,
                client_ids=[f"c{j}" for j in range(a, b)],
                backend=backend,
                send_bytes=4096,  # several all-to-all rounds even on these small shapes
                **params,
            )
            results[f"{backend}/{cid}"] = out
    for i, (cid, rule, f, params, pre, weighted, n, d, dtype) in enumerate(PRE_CASES):
        x, w = _data(n, d, dtype, seed=1000 + i)
        a, b = _split(n, world)[rank]
        results[f"pre/{cid}"] = distributed.aggregate(
            x[a:b],
            rule=rule,
            f=f,
            weights=w[a:b] if weighted else None,
            pre=pre,
            send_bytes=1 << 16,
            **params,
        )
    _errors_of_pre_and_rules(rank, world, results)
    results["device"] = str(comm_device(None))
    for backend in BACKENDS:
        res, primes, wts = _residues(9)
        a, b = _split(9, world)[rank]
        results[f"ckks/{backend}"] = distributed.ckks_sum(
            res[a:b], primes, wts[a:b], backend=backend
        )
    # The torch backend's distances themselves, bits of the single-process reference. Six
    # blocks: ranks after the first hold two or more (a per-rank sum then a sum over ranks
    # would add them in another order).
    x, _ = _data(9, 90_000, torch.float32, seed=123)
    a, b = _split(9, world)[rank]
    layout = Layout(tuple(q - p for p, q in _split(9, world)), 90_000, torch.float32, rank)
    layout = dataclasses.replace(layout, align=REFERENCE_BLOCK)
    xc = to_columns(x[a:b], layout, None, 1 << 16)
    results["distances"] = _torch_distances(xc, 9, None)
    # Errors raised on every rank, from one rank's bad input.
    x, _ = _data(7, 33, torch.float32, seed=99)
    a, b = _split(7, world)[rank]
    mine = x[a:b].clone()
    if rank == world - 1:
        mine[-1, 5] = float("nan")
    try:
        distributed.aggregate(mine, rule="median", client_ids=[f"c{j}" for j in range(a, b)])
    except NonFiniteUpdate as exc:
        results["error/nonfinite"] = str(exc)
    try:
        distributed.aggregate(x[a:b], rule="geometric_median", backend="native")
    except InvalidArgument as exc:
        results["error/backend"] = str(exc)
    ids = [f"c{j}" for j in range(a, b)]
    if rank == world - 1:
        ids[0] = "c0"  # rank 0's first client, again
    try:
        distributed.aggregate(x[a:b], rule="median", client_ids=ids)
    except DuplicateClient as exc:
        results["error/duplicate"] = str(exc)
    bad = x[a:b, :32] if rank == 0 else x[a:b]
    try:
        distributed.aggregate(bad, rule="median")
    except InvalidArgument as exc:
        results["error/shape"] = str(exc)
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.destroy_process_group()


def _errors_of_pre_and_rules(rank: int, world: int, results: dict) -> None:
    """Typed errors, the same on every rank, for calls the distributed aggregate refuses."""
    x, _ = _data(7, 300, torch.float32, seed=77)
    a, b = _split(7, world)[rank]
    calls = {
        "pre-native": dict(rule="median", f=1, pre=["nnm"], backend="native"),
        "clip-as-rule": dict(rule="clip", max_norm=1.0),
        "dp": dict(rule="mean", dp=object()),
        "pre-unknown-param": dict(rule="mean", pre=[("clip", {"max_norm": 1.0, "p": 2})]),
        "pre-no-max_norm": dict(rule="mean", pre=["clip"]),
        "pre-not-a-step": dict(rule="mean", pre=["krum"]),
        "nnm-precondition": dict(rule="mean", pre=[("nnm", {"f": 4})]),
        "center-shape": dict(rule="centered_clipping", center=torch.zeros(299)),
        # Rank 0 clips, the others do not: every rank must refuse, none may hang.
        "pre-disagree": dict(rule="mean", pre=[("clip", {"max_norm": 1.0})] if rank == 0 else []),
    }
    for key, kw in calls.items():
        try:
            distributed.aggregate(x[a:b], **kw)
            results[f"refused/{key}"] = "returned"
        except Exception as exc:
            results[f"refused/{key}"] = f"{type(exc).__name__}: {exc}"


@pytest.fixture(scope="module", params=[2, 3], ids=["ranks2", "ranks3"])
def spawned(request, tmp_path_factory):
    world = request.param
    out = tmp_path_factory.mktemp(f"dist{world}")
    codes = run_ranks(_worker, world, (str(out),), timeout_s=600)
    assert codes == [0] * world, codes
    return world, [torch.load(out / f"rank{r}.pt") for r in range(world)]


@pytest.mark.parametrize(("case", "backend"), COMBOS, ids=[f"{c[0]}-{b}" for c, b in COMBOS])
def test_bit_identical_to_one_process(spawned, case, backend):
    world, ranks = spawned
    cid, rule, f, params, weighted, n, d, dtype = case
    x, w = _data(n, d, dtype, seed=CASES.index(case))
    want = bcfl_engine.aggregate(
        x, rule=rule, f=f, weights=w if weighted else None, backend=backend, **params
    )
    for r, res in enumerate(ranks):
        got = res[f"{backend}/{cid}"]
        assert got.dtype == torch.float32 and got.shape == (d,)
        diff = (got != want).nonzero().reshape(-1)
        assert torch.equal(got, want), (
            f"rank {r} of {world}: {diff.numel()} columns differ, first {diff[:5].tolist()}"
        )


@pytest.mark.parametrize("case", PRE_CASES, ids=[c[0] for c in PRE_CASES])
def test_pre_steps_bit_identical_to_one_process(spawned, case):
    world, ranks = spawned
    cid, rule, f, params, pre, weighted, n, d, dtype = case
    x, w = _data(n, d, dtype, seed=1000 + PRE_CASES.index(case))
    pre_one = [
        (s[0], {k: v for k, v in s[1].items() if k != "inplace"}) if isinstance(s, tuple) else s
        for s in pre
    ]
    want = bcfl_engine.aggregate(
        x, rule=rule, f=f, weights=w if weighted else None, pre=pre_one, backend="torch", **params
    )
    # The pre-steps changed the result (else the case would not test them).
    plain = bcfl_engine.aggregate(
        x, rule=rule, f=f, weights=w if weighted else None, backend="torch", **params
    )
    assert not torch.equal(want, plain)
    for r, res in enumerate(ranks):
        got = res[f"pre/{cid}"]
        diff = (got != want).nonzero().reshape(-1)
        assert torch.equal(got, want), (
            f"rank {r} of {world}: {diff.numel()} columns differ, first {diff[:5].tolist()}"
        )


REFUSALS = {
    "pre-native": ("InvalidArgument", "torch reference"),
    "clip-as-rule": ("InvalidArgument", "'clip' is a pre-aggregation step"),
    "dp": ("DPUnsupported", "dp="),
    "pre-unknown-param": ("InvalidArgument", "clip: unexpected parameters ['p']"),
    "pre-no-max_norm": ("InvalidArgument", "clip: max_norm is required"),
    "pre-not-a-step": ("InvalidArgument", "'krum' is not a pre-aggregation step"),
    "nnm-precondition": ("PreconditionError", "nnm requires n > 2f"),
    "center-shape": ("InvalidArgument", "center must be [d=300]"),
    "pre-disagree": ("InvalidArgument", "other arguments"),
}


@pytest.mark.parametrize("key", sorted(REFUSALS))
def test_refused_calls_raise_one_typed_error_on_every_rank(spawned, key):
    _, ranks = spawned
    outcomes = {res[f"refused/{key}"] for res in ranks}
    assert len(outcomes) == 1, outcomes
    (text,) = outcomes
    kind, words = REFUSALS[key]
    assert text.startswith(f"{kind}: ") and words in text, text


def test_every_engine_rule_runs_distributed():
    """Each rule of the registry is an aggregate here or a pre-step here: none is left out."""
    for name, info in bcfl_engine.rules.RULES.items():
        where = distributed.RULES if info.kind == "aggregate" else distributed.PRE_STEPS
        assert name in where, name
    assert len(distributed.RULES) + len(distributed.PRE_STEPS) == len(bcfl_engine.rules.RULES)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ckks_sum_bit_identical_to_one_process(spawned, backend):
    world, ranks = spawned
    res, primes, wts = _residues(9)
    want = ckks_sum_one(res, primes, wts, backend=backend)
    assert torch.equal(want, ckks_sum_reference(res, primes, wts))
    for r, out in enumerate(ranks):
        assert torch.equal(out[f"ckks/{backend}"], want), f"rank {r} of {world}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_mean_overflow_takes_the_float64_path_everywhere(backend):
    """The case above does overflow in float32 (the single-process mean then recomputes every
    column in float64, which the distributed mean must do on every rank)."""
    i = next(j for j, c in enumerate(CASES) if c[0] == "mean-huge")
    x, _ = _data(10, 1001, torch.float32, seed=i)
    raw = dispatch("mean", bcfl_engine.rules.get("mean").kernels, x, backend, None)
    assert not bool(torch.isfinite(raw[:7]).any()) and bool(torch.isfinite(raw[7:]).all())


def test_torch_distances_are_the_reference_bits(spawned):
    _, ranks = spawned
    x, _ = _data(9, 90_000, torch.float32, seed=123)
    want = sq_dists_reference(x)
    for r, res in enumerate(ranks):
        assert torch.equal(res["distances"], want), f"rank {r}"


def test_krum_selection_matches_one_process(spawned):
    """Krum copies one row: the same bits means the same client was selected."""
    _, ranks = spawned
    for cid in ("krum", "krum-d600"):
        case = next(c for c in CASES if c[0] == cid)
        x, _ = _data(case[5], case[6], case[7], seed=CASES.index(case))
        got = ranks[0][f"torch/{cid}"]
        rows = [i for i in range(x.shape[0]) if torch.equal(x[i].float(), got)]
        want = krum_select(x, case[2], backend="torch")
        assert rows == [want]


def test_every_rank_raises_the_same_error(spawned):
    world, ranks = spawned
    msgs = {res.get("error/nonfinite") for res in ranks}
    assert len(msgs) == 1 and None not in msgs
    (msg,) = msgs
    assert "update 6 (client 'c6')" in msg and f"rank {world - 1}" in msg
    shapes = {res.get("error/shape") for res in ranks}
    assert len(shapes) == 1 and None not in shapes
    assert "d or dtype" in next(iter(shapes))
    dups = {res.get("error/duplicate") for res in ranks}
    assert len(dups) == 1 and "'c0' is on two ranks" in str(next(iter(dups)))
    backends = {res.get("error/backend") for res in ranks}
    assert len(backends) == 1 and "torch reference" in str(next(iter(backends)))


TIMEOUT_S = 4  # the process group's timeout in the failure tests, seconds


def _dying_worker(rank: int, world: int, port: int, out_dir: str, mode: str) -> None:
    _init(rank, world, port, TIMEOUT_S)
    x, _ = _data(9, 5000, torch.float32, seed=5)
    a, b = column_ranges(9, world)[rank]
    if rank == world - 1:
        # This rank dies once the round's metadata is exchanged, in the middle of the aggregate.
        def die(*args, **kwargs):
            if mode == "hang":  # alive but silent: the others must give up at the timeout
                time.sleep(TIMEOUT_S + 6)
            os._exit(3)

        distributed.to_columns = die  # type: ignore[assignment]
    start = time.monotonic()
    try:
        distributed.aggregate(x[a:b], rule="median", send_bytes=1024)
        outcome = "returned"
    except PeerFailure as exc:
        outcome = f"PeerFailure after {time.monotonic() - start:.1f}s: {exc}"
    except Exception as exc:  # any other type is reported, and fails the test
        outcome = f"{type(exc).__name__}: {exc}"
    Path(out_dir, f"rank{rank}.txt").write_text(outcome)
    os._exit(0)  # the group is broken: no orderly shutdown to wait for


@pytest.mark.parametrize("mode", ["exit", "hang"])
def test_dead_rank_gives_peer_failure_within_timeout(tmp_path, mode):
    world = 3
    codes = run_ranks(_dying_worker, world, (str(tmp_path), mode), timeout_s=60)
    assert codes == [0, 0, 3], codes
    for r in range(world - 1):
        text = Path(tmp_path, f"rank{r}.txt").read_text()
        assert text.startswith("PeerFailure after"), text
        seconds = float(text.split()[2].rstrip("s:"))
        # A closed connection is seen at once; a silent rank at the group's timeout.
        assert seconds < (TIMEOUT_S if mode == "exit" else TIMEOUT_S + 2.0), text
        assert mode == "exit" or seconds >= TIMEOUT_S * 0.9, text
        assert f"rank {r} of {world}" in text


@pytest.mark.parametrize("d", [1, 2, 255, 256, 257, 600, 1001, 4099, 200_000])
@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_column_ranges_cover_d_in_aligned_blocks(d, world):
    ranges = column_ranges(d, world)
    assert len(ranges) == world and ranges[0][0] == 0 and ranges[-1][1] == d
    for (a, b), (c, _) in itertools.pairwise(ranges):
        assert b == c and a <= b
    for a, b in ranges:
        if b > a:  # a non-empty range: aligned, and a block wide unless it is all of d
            assert a % COLUMN_ALIGN == 0
            assert b - a >= COLUMN_ALIGN or (a, b) == (0, d)


def test_aggregate_needs_an_initialised_group():
    with pytest.raises(InvalidArgument, match="not initialised"):
        distributed.aggregate(torch.zeros(3, 4), rule="mean")


@pytest.mark.parametrize(
    ("backend", "cuda", "want"),
    [
        ("gloo", False, "cpu"),
        ("gloo", True, "cpu"),  # gloo stays the CPU path on a machine with GPUs too
        ("nccl", True, "cuda:1"),
        ("NCCL", True, "cuda:1"),
        ("cpu:gloo,cuda:nccl", True, "cuda:1"),  # a group with both: the CUDA one
    ],
)
def test_the_group_backend_chooses_the_device(backend, cuda, want):
    assert device_for_backend(backend, cuda, 1) == torch.device(want)


@pytest.mark.parametrize(
    ("backend", "cuda", "error", "words"),
    [
        ("nccl", False, BackendUnavailable, "no CUDA device"),
        ("cpu:gloo,cuda:nccl", False, BackendUnavailable, "no CUDA device"),
        ("mpi", True, InvalidArgument, "'mpi' not supported"),
        ("ucc", False, InvalidArgument, "gloo (CPU tensors) or nccl (CUDA tensors)"),
    ],
)
def test_an_unusable_group_backend_is_a_typed_error(backend, cuda, error, words):
    with pytest.raises(error, match=re.escape(words)):
        device_for_backend(backend, cuda, 0)


def test_a_gloo_group_runs_on_the_cpu(spawned):
    _, ranks = spawned
    assert all(res["device"] == "cpu" for res in ranks)
    # The result is returned where the group works (the CPU under gloo).
    assert all(res["torch/mean"].device.type == "cpu" for res in ranks)
