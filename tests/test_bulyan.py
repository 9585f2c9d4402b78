"""bulyan: every backend x dtype x awkward shape selects the reference's rows in the same order
and matches its coordinate stage; ties in the coordinate stage resolve as the reference's."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.bulyan import (
    bulyan,
    bulyan_coordinates_reference,
    bulyan_reference,
    bulyan_select,
    bulyan_select_reference,
)

# (n, d, f): prime n, d not a power of two, f = 0 and f at its bound (n >= 4f + 3).
SHAPES = [(3, 1, 0), (7, 1000, 1), (13, 4099, 0), (13, 4099, 2), (64, 1031, 15), (67, 300, 16)]


def ids(shapes: list[tuple[int, ...]]) -> list[str]:
    return ["-".join(f"{k}{v}" for k, v in zip("ndf", s, strict=True)) for s in shapes]


def brute_force_select(x: torch.Tensor, f: int) -> list[int]:
    """Iterated Krum by loops over explicit float64 distances (k clamped to [1, r - 1])."""
    n = x.shape[0]
    xs = x.double()
    dist = [[float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    remaining, chosen = list(range(n)), []
    for _ in range(n - 2 * f):
        r = len(remaining)
        k = min(max(r - f - 2, 1), r - 1)
        scores = {i: sum(sorted(dist[i][j] for j in remaining if j != i)[:k]) for i in remaining}
        win = min(remaining, key=lambda i: (scores[i], i))
        chosen.append(win)
        remaining.remove(win)
    return chosen


def brute_force_coordinate(values: list[float], beta: int) -> float:
    """The mean of the beta values closest to the median, ties to the lower value."""
    s = sorted(values)
    t = len(s)
    med = (s[(t - 1) // 2] + s[t // 2]) / 2
    near = sorted(range(t), key=lambda i: (abs(s[i] - med), i))[:beta]
    return sum(s[i] for i in near) / beta


@pytest.mark.parametrize("n,d,f", SHAPES, ids=ids(SHAPES))
def test_bulyan_matches_reference(backend: str, dtype: torch.dtype, n: int, d: int, f: int) -> None:
    x = make_updates(n, d, dtype, seed=n * d + f)
    want = bulyan_select_reference(x, f)
    assert want.shape == (n - 2 * f,)
    assert torch.equal(bulyan_select(x, f, backend=backend), want)
    got = bulyan(x, f=f, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (d,)
    # beta <= 67 float32 values summed against float64: a few ulps of the largest.
    assert_close(got, bulyan_reference(x, f), rtol=1e-5, atol=1e-6)


def tied_distances(n: int, seed: int) -> dict[str, torch.Tensor]:
    """Squared-distance matrices where Krum scores tie or nearly tie: duplicated updates, small
    integer coordinates (many equal distances), one huge outlier next to tiny distances."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 20, generator=g, dtype=torch.float64)
    dup = x.clone()
    dup[n // 3 : 2 * n // 3] = dup[0]  # a third of the rows identical
    ints = torch.randint(-2, 3, (n, 6), generator=g).double()
    far = x * 1e-6
    far[0] = 1e9
    return {
        name: torch.cdist(v, v) ** 2
        for name, v in (("plain", x), ("dup", dup), ("ints", ints), ("far", far))
    }


@pytest.mark.parametrize("n,f", [(7, 1), (64, 15), (131, 32)], ids=lambda v: str(v))
def test_native_selection_is_the_reference_one_on_ties(n: int, f: int) -> None:
    # The C++ selection keeps running window sums and recomputes only the rows that could win:
    # it must pick the same rows in the same order, ties to the lowest index, as the torch one.
    pytest.importorskip("bcfl_engine._C")
    from bcfl_engine.rules._distances import iterated_krum
    from bcfl_engine.rules.bulyan import _select_native

    for name, dist in tied_distances(n, seed=n).items():
        theta = n - 2 * f
        assert torch.equal(_select_native(dist, f, theta), iterated_krum(dist, f, theta)), name


@pytest.mark.parametrize("n,f", [(3, 0), (7, 1), (11, 2), (12, 2)])
def test_reference_selection_is_the_brute_force_one(n: int, f: int) -> None:
    for seed in range(4):
        x = make_updates(n, 3, seed=seed)
        assert bulyan_select_reference(x, f).tolist() == brute_force_select(x, f)


def test_coordinate_stage_by_hand() -> None:
    # theta = 4 values per column (even: the median is the mean of the middle two), beta = 2.
    # Column 0: 0 1 3 10, median 2, distances 2 1 1 8: 1 and 3. Column 1: 0 2 4 5, median 3,
    # distances 3 1 1 2: 2 and 4. Column 2: 1 2 3 4, median 2.5: 2 and 3.
    x = torch.tensor([[0.0, 5.0, 1.0], [10.0, 0.0, 2.0], [3.0, 4.0, 3.0], [1.0, 2.0, 4.0]])
    got = bulyan_coordinates_reference(x, torch.arange(4), 2)
    assert_close(got, torch.tensor([2.0, 3.0, 2.5]), rtol=0, atol=0)
    # beta = 3 on 1 2 3 4 (median 2.5): 2 and 3, then 1 and 4 tie at 1.5: the lower, 1.
    got = bulyan_coordinates_reference(x, torch.arange(4), 3)
    assert_close(got[2], torch.tensor(2.0), rtol=0, atol=0)


# theta >= 193 takes the nth_element path of the C++ kernel (ranks up to theta = 192), where
# beta decides which ranks are contested: few (beta near theta), many (beta small) or none.
@pytest.mark.parametrize(
    "theta,beta",
    [
        *[(1, 1), (2, 1), (4, 2), (5, 3), (8, 8), (9, 1), (34, 4), (197, 5)],
        *[(197, 150), (200, 196), (200, 200), (201, 101), (196, 1), (300, 3), (300, 2)],
    ],
)
def test_coordinate_stage_breaks_ties_as_the_reference(backend: str, theta: int, beta: int) -> None:
    # Small integers: equal values and equidistant pairs around the median in most columns;
    # Gaussian columns after them, where no two values are equal.
    g = torch.Generator().manual_seed(theta * 100 + beta)
    x = torch.cat(
        [
            torch.randint(-3, 4, (theta + 3, 300), generator=g).float(),
            torch.randn(theta + 3, 215, generator=g),
        ],
        1,
    )
    idx = torch.randperm(theta + 3, generator=g)[:theta]
    want = bulyan_coordinates_reference(x, idx, beta)
    for j in (0, 1, 7):
        assert want[j].item() == pytest.approx(brute_force_coordinate(x[idx, j].tolist(), beta))
    if backend == "torch":
        got = want
    elif backend == "native":
        from bcfl_engine.backends import native

        got = torch.empty(515)
        native().bulyan_coordinates(x, idx, beta, got)
    else:
        from bcfl_engine.kernels.bulyan import bulyan_coordinates

        got = bulyan_coordinates(x, idx, beta)
    assert_close(got, want, rtol=1e-6, atol=1e-6)


def test_far_away_updates_are_never_selected(backend: str) -> None:
    n, f, d = 15, 3, 501
    x = make_updates(n, d, seed=13)
    byzantine = [2, 7, 14]
    x[byzantine] = 40 * x[byzantine] - 250
    chosen = bulyan_select(x, f, backend=backend)
    assert not set(chosen.tolist()) & set(byzantine)
    honest = x[[i for i in range(n) if i not in byzantine]]
    got = bulyan(x, f=f, backend=backend)
    assert bool((got >= honest.min(0).values).all() and (got <= honest.max(0).values).all())


def test_bulyan_rejects_bad_input() -> None:
    x = make_updates(10, 5)
    with pytest.raises(PreconditionError, match=r"n >= 4f \+ 3.*n=10, f=2"):
        bulyan(x, f=2)
    with pytest.raises(InvalidArgument, match="f must be an int"):
        bulyan_select(x, 0.5)  # type: ignore[arg-type]


def test_aggregate_runs_bulyan_by_name() -> None:
    x = make_updates(11, 40, seed=2)
    assert_close(be.aggregate(x, rule="bulyan", f=2), bulyan_reference(x, 2))


@pytest.mark.parametrize("row", [0, 5], ids=["first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_bulyan_names_the_non_finite_update_without_a_scan_of_its_own(
    backend: str, row: int, value: float
) -> None:
    # The check is read off what the rule computes anyway (see its docstring); only then are
    # rows scanned, to name the culprit.
    x = make_updates(9, 300, seed=6)
    x[row, 123] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        bulyan(x, f=1, backend=backend)


def test_bulyan_of_values_near_the_float32_maximum_is_finite(backend: str) -> None:
    # The coordinate stage averages beta values near 3e38: finite, as the float64 reference.
    g = torch.Generator().manual_seed(9)
    x = 3.3e38 + 1e36 * torch.randn(11, 40, generator=g)
    x[:, ::3] *= -1
    got = bulyan(x, f=2, backend=backend)
    assert bool(torch.isfinite(got).all())
    assert_close(got, bulyan_reference(x, 2), rtol=1e-6, atol=0)
