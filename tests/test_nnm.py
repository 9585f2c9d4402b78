"""nnm: every backend x dtype x awkward shape picks the reference's neighbourhoods and mixes them
as the reference does; honest updates never mix with far-away ones."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.krum import krum
from bcfl_engine.rules.nnm import nnm, nnm_reference, nnm_select, nnm_select_reference

# (n, d, f): prime n, d not a power of two, f = 0 and f at its bound (n > 2f).
SHAPES = [(3, 1, 1), (7, 1000, 3), (13, 4099, 0), (13, 4099, 6), (64, 2053, 31), (67, 300, 33)]


def ids(shapes: list[tuple[int, ...]]) -> list[str]:
    return ["-".join(f"{k}{v}" for k, v in zip("ndf", s, strict=True)) for s in shapes]


def brute_force_neighbours(x: torch.Tensor, f: int) -> list[list[int]]:
    """Each row's n - f nearest rows (itself first, then by distance and index), by loops."""
    n = x.shape[0]
    xs = x.double()
    out = []
    for i in range(n):
        dist = {j: float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n) if j != i}
        out.append([i, *sorted(dist, key=lambda j: (dist[j], j))[: n - f - 1]])
    return out


@pytest.mark.parametrize("n,d,f", SHAPES, ids=ids(SHAPES))
def test_nnm_matches_reference(backend: str, dtype: torch.dtype, n: int, d: int, f: int) -> None:
    x = make_updates(n, d, dtype, seed=n * d + f)
    want = nnm_select_reference(x, f)
    assert want.shape == (n, n - f)
    assert torch.equal(nnm_select(x, f, backend=backend), want)
    got = nnm(x, f=f, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (n, d)
    # A float32 sum of n - f <= 67 values against a float64 one: a few ulps of the largest.
    assert_close(got, nnm_reference(x, f), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("n,f", [(3, 1), (6, 2), (9, 0), (10, 4)])
def test_reference_neighbourhoods_are_the_brute_force_ones(n: int, f: int) -> None:
    for seed in range(4):
        x = make_updates(n, 3, seed=seed)
        assert nnm_select_reference(x, f).tolist() == brute_force_neighbours(x, f)


def test_nnm_by_hand() -> None:
    # Points 0, 1, 3, 10 on a line, f = 1: each averages itself and its 2 nearest others.
    x = torch.tensor([[0.0], [1.0], [3.0], [10.0]])
    assert nnm_select_reference(x, 1).tolist() == [[0, 1, 2], [1, 0, 2], [2, 1, 0], [3, 2, 1]]
    want = torch.tensor([[4 / 3], [4 / 3], [4 / 3], [14 / 3]])
    assert_close(nnm_reference(x, 1), want, rtol=1e-7, atol=0)
    # f = 0: every row becomes the mean of all.
    assert_close(nnm_reference(x, 0), torch.full((4, 1), 3.5), rtol=0, atol=0)


def test_honest_updates_do_not_mix_with_far_away_ones(backend: str) -> None:
    n, f, d = 12, 4, 600
    x = make_updates(n, d, seed=17)
    byzantine = [1, 2, 8, 11]
    honest = [i for i in range(n) if i not in byzantine]
    x[byzantine] = 30 * x[byzantine] + 100
    nbr = nnm_select(x, f, backend=backend)
    for i in honest:
        assert sorted(nbr[i].tolist()) == honest
    got = nnm(x, f=f, backend=backend)
    assert_close(got[honest], x[honest].mean(0).expand(len(honest), d), rtol=1e-5, atol=1e-6)


def test_nnm_rejects_bad_input() -> None:
    x = make_updates(8, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f.*n=8, f=4"):
        nnm(x, f=4)
    with pytest.raises(InvalidArgument, match="f must be an int"):
        nnm_select(x, "1")  # type: ignore[arg-type]


def test_aggregate_applies_nnm_before_the_rule() -> None:
    x = make_updates(11, 40, seed=2)
    got = be.aggregate(x, rule="krum", f=2, pre=["nnm"])
    assert torch.equal(got, krum(nnm(x, f=2), f=2))


@pytest.mark.parametrize("row", [0, 5], ids=["first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_nnm_names_the_non_finite_update_without_a_scan_of_its_own(
    backend: str, row: int, value: float
) -> None:
    # The check is read off what the rule computes anyway (see its docstring); only then are
    # rows scanned, to name the culprit.
    x = make_updates(9, 300, seed=6)
    x[row, 123] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        nnm(x, f=2, backend=backend)
