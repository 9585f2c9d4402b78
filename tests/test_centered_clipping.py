"""centered_clipping: every backend x dtype x awkward shape against the torch reference, the
formula on a hand-computed case, a Byzantine scenario and the error cases."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.centered_clipping import centered_clipping, centered_clipping_reference

# Prime n, d not a power of two; n = 131 > 128 takes the Triton kernel's two-walk layout.
SHAPES = [(1, 1), (2, 3), (7, 1000), (13, 4099), (131, 67)]
IDS = [f"n{n}-d{d}" for n, d in SHAPES]

# The fast paths form beta * v + sum_i c_i x_i where the reference forms v + mean_i c_i (x_i - v):
# the same number, rounded differently, a few ulps of |x| per iteration (measured: 4e-7 at 3).
RTOL, ATOL = 1e-5, 2e-6


@pytest.mark.parametrize("n,d", SHAPES, ids=IDS)
@pytest.mark.parametrize("centered", [False, True], ids=["zeros", "center"])
@pytest.mark.parametrize("n_iter", [1, 3], ids=["1it", "3it"])
def test_centered_clipping_matches_reference(
    backend: str, dtype: torch.dtype, n: int, d: int, centered: bool, n_iter: int
) -> None:
    x = make_updates(n, d, dtype, seed=n * d)
    center = 0.3 * make_updates(1, d, seed=d)[0] if centered else None
    # tau at about the median distance: some rows are clipped, some are not, in every case.
    tau = 0.9 * d**0.5
    got = centered_clipping(
        x, f=(n - 1) // 2, tau=tau, n_iter=n_iter, center=center, backend=backend
    )
    assert got.dtype == torch.float32 and got.shape == (d,)
    ref = centered_clipping_reference(x, tau=tau, n_iter=n_iter, center=center)
    assert_close(got, ref, rtol=RTOL, atol=ATOL)


def test_reference_follows_the_formula() -> None:
    # Row 0 (norm 5) is shortened to norm tau = 1, row 1 (norm 0.5) is kept: v = their mean.
    x = torch.tensor([[3.0, 4.0], [0.0, 0.5]])
    got = centered_clipping_reference(x, tau=1.0, n_iter=1)
    assert_close(got, torch.tensor([0.3, 0.65]))
    # A point equal to the center contributes nothing (no division by its zero distance).
    v = torch.tensor([1.0, 1.0])
    same = centered_clipping(torch.stack([v, v]), tau=0.5, n_iter=2, center=v, backend="torch")
    assert torch.equal(same, v)


def test_large_tau_is_the_mean_step(backend: str) -> None:
    # No row is clipped: one iteration from any center lands on the mean.
    x = make_updates(9, 100, seed=1)
    got = centered_clipping(x, tau=1e6, n_iter=1, center=torch.ones(100), backend=backend)
    assert_close(got, x.mean(dim=0), atol=1e-6)


def test_centered_clipping_bounds_a_byzantine_minority(backend: str) -> None:
    g = torch.Generator().manual_seed(0)
    n, f, d, tau = 25, 5, 50, 10.0
    honest = 1.0 + 0.1 * torch.randn(n - f, d, generator=g)
    truth = honest.mean(dim=0)
    outs = []
    for magnitude in (1e4, 1e8):
        x = torch.cat([honest, torch.full((f, d), magnitude)])
        outs.append(centered_clipping(x, f=f, tau=tau, n_iter=3, backend=backend))
        assert float((x.mean(dim=0) - truth).norm()) > 1e3
    # Attackers only reach v through a step of norm tau each: a 10^4 times stronger attack gives
    # the same aggregate, whose error tends to f * tau / (n - f) = 2.5 (the fixed point; after 3
    # iterations from 0 it is 2.5 - 0.2^3 * (2.5 + ||truth||) = 2.42 here).
    assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    assert float((outs[0] - truth).norm()) < 2.5 + 0.2


def test_aggregate_passes_the_rule_parameters() -> None:
    x = make_updates(5, 8, seed=4)
    center = torch.full((8,), 0.5)
    out = be.aggregate(
        x, rule="centered_clipping", f=2, tau=0.7, n_iter=2, center=center, backend="torch"
    )
    assert_close(out, centered_clipping_reference(x, tau=0.7, n_iter=2, center=center))


def test_centered_clipping_rejects_bad_input() -> None:
    x = make_updates(4, 5)
    with pytest.raises(
        PreconditionError, match=r"n > 2f \(Karimireddy et al. 2021\); got n=4, f=2"
    ):
        centered_clipping(x, f=2)
    with pytest.raises(InvalidArgument, match="tau must be a finite number > 0"):
        centered_clipping(x, tau=0.0)
    with pytest.raises(InvalidArgument, match="tau must be a finite number > 0"):
        centered_clipping(x, tau=float("inf"))
    with pytest.raises(InvalidArgument, match="n_iter must be an int >= 1"):
        centered_clipping(x, n_iter=0)
    with pytest.raises(InvalidArgument, match=r"center must be \[d=5\]; got shape \(4,\)"):
        centered_clipping(x, center=torch.zeros(4))
    with pytest.raises(InvalidArgument, match="center holds NaN"):
        centered_clipping(x, center=torch.full((5,), float("nan")))
    with pytest.raises(InvalidArgument, match="center must be a"):
        centered_clipping(x, center="zeros")
    x[1, 4] = float("nan")
    with pytest.raises(NonFiniteUpdate, match="update 1"):
        centered_clipping(x)


@pytest.mark.parametrize("row", [0, 5], ids=["first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_centered_clipping_names_the_non_finite_update_without_a_scan_of_its_own(
    backend: str, row: int, value: float
) -> None:
    # The check is read off what the rule computes anyway (see its docstring); only then are
    # rows scanned, to name the culprit.
    x = make_updates(9, 300, seed=6)
    x[row, 123] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        centered_clipping(x, f=2, backend=backend)


@pytest.mark.parametrize("scale", [1e12, 1e19, 1e30], ids=["1e12", "1e19", "1e30"])
def test_a_far_outlier_pulls_by_at_most_tau(backend: str, scale: float) -> None:
    # Whatever its distance, the outlier moves v by tau / n per iteration toward itself: its
    # distance must not overflow (float32 squares of 1e19 do) into a pull of 0 or of inf.
    g = torch.Generator().manual_seed(3)
    x = 1.0 + torch.randn(9, 200, generator=g)
    x[4] = scale
    got = centered_clipping(x, f=1, tau=1.0, n_iter=3, backend=backend)
    assert bool(torch.isfinite(got).all())
    assert_close(got, centered_clipping_reference(x, tau=1.0, n_iter=3), rtol=1e-5, atol=1e-5)
    # The same as an outlier at 1e6 in the same direction, to float32 rounding.
    x[4] = 1e6
    assert_close(got, centered_clipping_reference(x, tau=1.0, n_iter=3), rtol=1e-4, atol=1e-4)
