"""multi_krum: every backend x dtype x awkward shape selects the reference's rows, in the same
order, and averages them as the reference does; m at 1, n - f and n; far-away updates lose."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.krum import krum_reference
from bcfl_engine.rules.mean import mean_reference
from bcfl_engine.rules.multi_krum import (
    multi_krum,
    multi_krum_reference,
    multi_krum_select,
    multi_krum_select_reference,
)

# (n, d, f, m): prime n, d not a power of two, f = 0 and f at its bound (n > 2f + 2); m at 1,
# its default n - f (None) and n.
SHAPES = [
    (3, 1, 0, None),
    (7, 1000, 2, 1),
    (13, 4099, 0, 13),
    (13, 4099, 5, None),
    (64, 2053, 30, None),
    (67, 300, 32, 5),
]


def ids(shapes: list[tuple[int, ...]]) -> list[str]:
    return ["-".join(f"{k}{v}" for k, v in zip("ndfm", s, strict=False)) for s in shapes]


def brute_force_order(x: torch.Tensor, f: int) -> list[int]:
    """Rows by (Krum score, index), from loops over explicit float64 distances."""
    n = x.shape[0]
    xs = x.double()
    dist = [[float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    scores = [sum(sorted(dist[i][j] for j in range(n) if j != i)[: n - f - 2]) for i in range(n)]
    return sorted(range(n), key=lambda i: (scores[i], i))


@pytest.mark.parametrize("n,d,f,m", SHAPES, ids=ids(SHAPES))
def test_multi_krum_matches_reference(
    backend: str, dtype: torch.dtype, n: int, d: int, f: int, m: int | None
) -> None:
    x = make_updates(n, d, dtype, seed=n * d + f)
    k = n - f if m is None else m
    want = multi_krum_select_reference(x, f, k)
    assert want.shape == (k,)
    assert torch.equal(multi_krum_select(x, f, m, backend=backend), want)
    got = multi_krum(x, f=f, m=m, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (d,)
    # A float32 sum of m <= 67 values against a float64 one: a few ulps of the largest term.
    assert_close(got, multi_krum_reference(x, f, k), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,f", [(3, 0), (6, 1), (9, 3), (10, 2)])
def test_reference_order_is_the_brute_force_one(n: int, f: int) -> None:
    for seed in range(4):
        x = make_updates(n, 3, seed=seed)
        assert multi_krum_select_reference(x, f, n).tolist() == brute_force_order(x, f)


def test_m_one_is_krum_and_m_n_is_the_mean() -> None:
    x = make_updates(9, 31, seed=4)
    assert_close(multi_krum_reference(x, 2, 1), krum_reference(x, 2), rtol=0, atol=0)
    assert_close(multi_krum_reference(x, 2, 9), mean_reference(x), rtol=1e-6, atol=1e-7)


def test_far_away_updates_are_never_selected(backend: str) -> None:
    n, f, d = 17, 4, 777
    x = make_updates(n, d, seed=11)
    byzantine = [0, 5, 9, 16]
    x[byzantine] = -20 * x[byzantine] + 300
    chosen = multi_krum_select(x, f, backend=backend)
    assert set(chosen.tolist()) == set(range(n)) - set(byzantine)
    honest = torch.tensor(sorted(set(range(n)) - set(byzantine)))
    assert_close(multi_krum(x, f=f, backend=backend), x[honest].double().mean(0).float())


def test_multi_krum_rejects_bad_input() -> None:
    x = make_updates(8, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f \+ 2.*n=8, f=3"):
        multi_krum(x, f=3)
    for bad in (0, 9, 2.0, True):
        with pytest.raises(InvalidArgument, match=r"m must be an int in \[1, n=8\]"):
            multi_krum(x, f=1, m=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="f must be an int"):
        multi_krum_select(x, -1)


def test_aggregate_passes_m() -> None:
    x = make_updates(11, 40, seed=2)
    got = be.aggregate(x, rule="multi_krum", f=2, m=4)
    assert_close(got, multi_krum_reference(x, 2, 4))


@pytest.mark.parametrize("scale", [1e19, 1e30, 1e38], ids=["1e19", "1e30", "1e38"])
def test_multi_krum_of_huge_updates_is_finite_and_selects_as_the_reference(
    backend: str, scale: float
) -> None:
    # Squared distances of rows at 1e19 and beyond overflow a float32 Gram (the fast paths
    # then redo it in float64), and a float32 sum of rows near 3e38 overflows (select_mean
    # sums in float64): the mean of the selected rows stays finite and exact.
    g = torch.Generator().manual_seed(5)
    x = scale * (1.0 + 0.1 * torch.randn(11, 333, generator=g))
    x[3] = -3 * scale  # far from the others: never selected
    got = multi_krum(x, f=2, backend=backend)
    assert bool(torch.isfinite(got).all())
    assert torch.equal(
        multi_krum_select(x, 2, backend=backend), multi_krum_select_reference(x, 2, 9)
    )
    assert_close(got, multi_krum_reference(x, 2, 9), rtol=1e-6, atol=0)


@pytest.mark.parametrize("row", [0, 5], ids=["pivot-or-first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=str)
def test_multi_krum_names_the_non_finite_update_from_its_distances(
    backend: str, row: int, value: float
) -> None:
    x = make_updates(9, 500, seed=4)
    x[row, 17] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        multi_krum(x, f=2, backend=backend)
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        multi_krum_select(x, 2, backend=backend)


def test_multi_krum_of_tiny_updates_selects_as_the_reference(backend: str) -> None:
    # Squares of 1e-30 underflow float32: a float32 Gram would make every distance 0 and
    # select by index; the fast paths redo it in float64.
    x = make_updates(11, 300, seed=12) * 1e-30
    x[7] *= 50  # far from the others at this scale: never selected
    want = multi_krum_select_reference(x, 2, 5)
    assert 7 not in want.tolist()
    assert torch.equal(multi_krum_select(x, 2, 5, backend=backend), want)
    assert_close(
        multi_krum(x, f=2, m=5, backend=backend) / 1e-30, multi_krum_reference(x, 2, 5) / 1e-30
    )
