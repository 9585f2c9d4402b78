"""geometric_median: every backend x dtype x awkward shape against the torch reference, the
minimizing property, a Byzantine scenario and the error cases."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules._common import normalized_weights
from bcfl_engine.rules.geometric_median import (
    geometric_median,
    geometric_median_reference,
    step_native,
    weiszfeld,
)

# Prime n, d not a power of two; n = 131 > 128 takes the Triton kernel's two-walk layout.
SHAPES = [(1, 1), (2, 3), (7, 1000), (13, 4099), (131, 67)]
IDS = [f"n{n}-d{d}" for n, d in SHAPES]

# A fixed number of steps (tol=0, max_iter=5) follows the same trajectory on every backend:
# float32 sums that reassociate differ by a few ulps per step, over 5 steps at most 1e-6 of
# values of order 1 (measured: 2e-7).
STEPS = {"tol": 0.0, "max_iter": 5}
RTOL, ATOL = 1e-5, 1e-6


def objective(x: torch.Tensor, v: torch.Tensor, w: torch.Tensor | None = None) -> float:
    """``sum_i alpha_i ||v - x_i||`` with normalized weights, in float64."""
    alpha = normalized_weights(w, x.shape[0]).to(x.device)
    return float((alpha * torch.linalg.vector_norm(x.double() - v.double(), dim=1)).sum())


@pytest.mark.parametrize("n,d", SHAPES, ids=IDS)
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
def test_geometric_median_matches_reference(
    backend: str, dtype: torch.dtype, n: int, d: int, weighted: bool
) -> None:
    x = make_updates(n, d, dtype, seed=n * d)
    w = torch.rand(n, dtype=torch.float64) + 0.1 if weighted else None
    got = geometric_median(x, w, f=(n - 1) // 2, backend=backend, **STEPS)
    assert got.dtype == torch.float32 and got.shape == (d,)
    assert_close(got, geometric_median_reference(x, w, **STEPS), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n,d", SHAPES[2:], ids=IDS[2:])
def test_geometric_median_default_tolerance_reaches_the_same_objective(
    backend: str, n: int, d: int
) -> None:
    # With tol > 0 two backends may stop one step apart: the objective is flat to second order
    # at the minimum, so points that agree on it to 1e-6 may differ by ~sqrt(1e-6) = 1e-3.
    # Compare what the rule promises, the objective, and the points loosely.
    x = make_updates(n, d, seed=n + d)
    got = geometric_median(x, backend=backend)
    ref = geometric_median_reference(x)
    assert objective(x, got) <= objective(x, ref) * (1 + 1e-5)
    assert_close(got, ref, rtol=0, atol=5e-3)


def test_reference_is_the_one_dimensional_median() -> None:
    # In 1-D the geometric median is the median: 2 for these five points, whatever the outliers.
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [100.0]])
    got = geometric_median_reference(x, max_iter=500, tol=0.0)
    assert abs(float(got[0]) - 2.0) < 1e-3


def test_reference_minimizes_the_objective() -> None:
    x = make_updates(9, 16, seed=3)
    v = geometric_median_reference(x, max_iter=200, tol=0.0)
    best = objective(x, v)
    g = torch.Generator().manual_seed(1)
    for _ in range(20):
        assert best <= objective(x, v + 1e-2 * torch.randn(16, generator=g)) + 1e-9
    assert best < objective(x, x.mean(dim=0))


def test_weights_pull_toward_the_heavy_client() -> None:
    x = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    w = torch.tensor([10.0, 1.0, 1.0])  # more than half of the weight: the median is that point
    got = geometric_median(x, w, max_iter=200, tol=0.0, backend="torch")
    assert_close(got, torch.zeros(2), atol=1e-4)


def test_native_stops_when_the_point_settles() -> None:
    pytest.importorskip("bcfl_engine._C")
    x = make_updates(11, 300, seed=5)
    w = normalized_weights(None, 11).to(x.device)
    _, it_fixed = weiszfeld(x, w, 1e-6, 7, 0.0, step_native)
    _, it_tol = weiszfeld(x, w, 1e-6, 100, 1e-3, step_native)
    assert it_fixed == 7 and 1 <= it_tol < 7


def weiszfeld64(x: torch.Tensor, start: torch.Tensor, iters: int = 20000) -> torch.Tensor:
    """An oracle: plain Weiszfeld in float64 from ``start`` for a fixed, large number of steps
    (no smoothing needed: the start is not a data point)."""
    x64, v = x.double(), start.double()
    for _ in range(iters):
        a = 1.0 / torch.linalg.vector_norm(x64 - v, dim=1)
        v = (a[:, None] * x64).sum(dim=0) / a.sum()
    return v


def honest_and_outlier(
    n: int, d: int, scale: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n - 1`` honest updates (N(1, 1)) and the same with one more row at ``scale`` in every
    coordinate (the outlier's direction does not depend on ``scale``)."""
    g = torch.Generator().manual_seed(seed)
    honest = 1.0 + torch.randn(n - 1, d, generator=g)
    return honest, torch.cat([honest, torch.full((1, d), scale)])


SCALES = [1e12, 1e19, 1e30, 3e38]


@pytest.mark.parametrize("n", [3, 11], ids=["n3", "n11"])
def test_an_outlier_of_any_magnitude_moves_it_no_further(backend: str, n: int) -> None:
    # The geometric median with one client out of n > 2f at any distance is the point where the
    # honest clients' unit vectors balance the outlier's: the same point for 1e12 and 3e38.
    # Checked against plain float64 Weiszfeld, which has no overflow at these magnitudes.
    d = 257
    honest, _ = honest_and_outlier(n, d, 1.0, seed=n)
    oracle = weiszfeld64(torch.cat([honest, torch.full((1, d), 1e12)]), honest.mean(dim=0))
    spread = float(torch.linalg.vector_norm(honest - honest.mean(dim=0), dim=1).median())
    for scale in SCALES:
        _, x = honest_and_outlier(n, d, scale, seed=n)
        got = geometric_median(x, f=1, backend=backend, max_iter=300, tol=1e-9)
        assert bool(torch.isfinite(got).all()), scale
        # 1e-4 of the honest spread: float32 steps, converged to tol 1e-9 of the spread.
        assert_close(got, oracle.float(), rtol=0, atol=1e-4 * spread)


@pytest.mark.parametrize("scale", [1e12, 1e30], ids=["1e12", "1e30"])
def test_default_settings_resist_a_far_outlier(backend: str, scale: float) -> None:
    # With the defaults (tol 1e-6, at most 100 steps) a client at 1e12 or 1e30 moves the result
    # from that of a client at 1e3 by no more than 1e-4 of the honest spread (the stopping rule
    # is relative to the clients' median distance, not to an objective the outlier dominates).
    n, d = 11, 1000
    honest, near = honest_and_outlier(n, d, 1e3, seed=7)
    _, far = honest_and_outlier(n, d, scale, seed=7)
    spread = float(torch.linalg.vector_norm(honest - honest.mean(dim=0), dim=1).median())
    ref = geometric_median(near, f=1, backend=backend)
    got = geometric_median(far, f=1, backend=backend)
    assert_close(got, ref, rtol=0, atol=1e-4 * spread)
    # And the honest median itself is within the classic bound: (n - f) / (n - 2f) times the
    # honest spread (Minsker 2015, Lemma 2.1, alpha = f / n).
    alone = geometric_median_reference(honest, max_iter=500, tol=1e-9)
    assert float((got - alone).norm()) <= 2 * (n - 1) / (n - 2) * spread


def test_tiny_updates_have_exact_distances(backend: str) -> None:
    # Squares of 1e-30 underflow float32 (to 0): the fast paths sum those rows again in
    # float64, so the median of tiny updates is the median of the same updates scaled up, then
    # scaled down (float32 values of 1e-30 are normal: only the squares underflow).
    tiny = 1e-30
    x = make_updates(7, 300, seed=11)
    got = geometric_median(x * tiny, backend=backend, eps=1e-60, **STEPS)
    want = geometric_median_reference(x, eps=1e-60 / tiny, **STEPS)
    assert_close(got / tiny, want, rtol=RTOL, atol=ATOL)


def test_geometric_median_resists_a_byzantine_minority(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, f, d = 21, 6, 64
    honest = 1.0 + 0.1 * torch.randn(n - f, d, generator=g)
    x = torch.cat([honest, torch.full((f, d), 1e4)])  # 6 of 21 attackers, far away
    truth = honest.mean(dim=0)
    got = geometric_median(x, f=f, backend=backend)
    assert float((got - truth).norm()) < 1.0  # honest spread is ~0.8 per client
    assert float((x.mean(dim=0) - truth).norm()) > 1e4  # the mean is dragged away


def test_runs_are_deterministic(backend: str) -> None:
    x = make_updates(13, 4099, seed=2)
    a = geometric_median(x, backend=backend, **STEPS)
    assert torch.equal(a, geometric_median(x, backend=backend, **STEPS))


def test_aggregate_wires_weights_and_f() -> None:
    x = make_updates(5, 8, seed=4)
    w = [1.0, 2.0, 3.0, 1.0, 1.0]
    out = be.aggregate(x, rule="geometric_median", f=2, weights=w, backend="torch")
    assert_close(out, geometric_median_reference(x, torch.tensor(w)))


def test_geometric_median_rejects_bad_input() -> None:
    x = make_updates(4, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f \(Pillutla et al. 2022\); got n=4, f=2"):
        geometric_median(x, f=2)
    with pytest.raises(InvalidArgument, match="f must be an int"):
        geometric_median(x, f=-1)
    with pytest.raises(InvalidArgument, match="eps must be a finite number > 0"):
        geometric_median(x, eps=0.0)
    with pytest.raises(InvalidArgument, match="max_iter must be an int >= 1"):
        geometric_median(x, max_iter=0)
    with pytest.raises(InvalidArgument, match="max_iter must be an int >= 1"):
        geometric_median(x, max_iter=True)
    with pytest.raises(InvalidArgument, match="tol must be a finite number >= 0"):
        geometric_median(x, tol=-1e-3)
    with pytest.raises(InvalidArgument, match=r"weights must be \[n=4\]"):
        geometric_median(x, torch.ones(3))
    with pytest.raises(InvalidArgument, match="dtype must be one of"):
        geometric_median(x.double())
    x[3, 0] = float("inf")
    with pytest.raises(NonFiniteUpdate, match="update 3"):
        geometric_median(x)


@pytest.mark.parametrize("row", [0, 5], ids=["first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_geometric_median_names_the_non_finite_update_without_a_scan_of_its_own(
    backend: str, row: int, value: float
) -> None:
    # The check is read off what the rule computes anyway (see its docstring); only then are
    # rows scanned, to name the culprit.
    x = make_updates(9, 300, seed=6)
    x[row, 123] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        geometric_median(x, f=2, backend=backend, **STEPS)
