"""krum and the shared distances: every backend x dtype x awkward shape selects what the float64
reference selects, the reference agrees with a brute-force loop, and far-away updates lose."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules._distances import sq_dists, sq_dists_reference
from bcfl_engine.rules.krum import krum, krum_reference, krum_select, krum_select_reference

# (n, d, f): prime n, d not a power of two, f = 0 and f at its bound (n > 2f + 2); n = 67 has
# two row panels in the native Gram and two row tiles (three tile pairs) in the Triton one.
SHAPES = [(3, 1, 0), (7, 1000, 2), (13, 4099, 0), (13, 4099, 5), (64, 4101, 30), (67, 300, 32)]


def ids(shapes: list[tuple[int, ...]]) -> list[str]:
    return ["-".join(f"{k}{v}" for k, v in zip("ndfm", s, strict=False)) for s in shapes]


def brute_force_krum(x: torch.Tensor, f: int) -> int:
    """Krum by loops over explicit float64 distances: the reference's selection, checked."""
    n = x.shape[0]
    xs = x.double()
    dist = [[float(((xs[i] - xs[j]) ** 2).sum()) for j in range(n)] for i in range(n)]
    scores = [sum(sorted(dist[i][j] for j in range(n) if j != i)[: n - f - 2]) for i in range(n)]
    return min(range(n), key=lambda i: (scores[i], i))


@pytest.mark.parametrize("n,d,f", SHAPES, ids=ids(SHAPES))
def test_krum_selects_what_the_reference_selects(
    backend: str, dtype: torch.dtype, n: int, d: int, f: int
) -> None:
    x = make_updates(n, d, dtype, seed=n * d + f)
    want = krum_select_reference(x, f)
    assert krum_select(x, f, backend=backend) == want
    got = krum(x, f=f, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (d,)
    assert torch.equal(got, x[want].float()), "Krum returns an exact copy of the winner"


@pytest.mark.parametrize(
    "n,d,f",
    [(3, 2, 0), (5, 3, 1), (8, 4, 2), (9, 1, 0)],
    ids=ids([(3, 2, 0), (5, 3, 1), (8, 4, 2), (9, 1, 0)]),
)
def test_reference_selection_is_the_brute_force_one(n: int, d: int, f: int) -> None:
    for seed in range(5):
        x = make_updates(n, d, seed=seed)
        assert krum_select_reference(x, f) == brute_force_krum(x, f)


def test_krum_by_hand() -> None:
    # Points 0, 1, 2, 100 on a line, f = 0: k = 2 neighbours; scores 1+4, 1+1, 1+4, 98^2+99^2.
    x = torch.tensor([[0.0], [1.0], [2.0], [100.0]])
    assert krum_select_reference(x, 0) == 1
    assert_close(krum_reference(x, 0), torch.tensor([1.0]))
    # Equal scores (a symmetric square): the lowest index wins.
    sq = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    assert krum_select_reference(sq, 0) == 0


def test_far_away_updates_are_never_selected(backend: str) -> None:
    n, f, d = 13, 5, 999
    x = make_updates(n, d, seed=7)
    byzantine = [1, 4, 6, 10, 12]
    x[byzantine] = x[byzantine] * 50 + 1000
    i = krum_select(x, f, backend=backend)
    assert i not in byzantine and i == krum_select_reference(x, f)


def test_common_component_does_not_change_the_selection(backend: str) -> None:
    # Updates that share a component 1e6 times their spread: an uncentred float32 Gram loses
    # every digit of G_ii + G_jj - 2 G_ij. Two far outliers would drag a column-mean centre.
    n, d, f = 11, 3001, 4
    g = torch.Generator().manual_seed(3)
    common = torch.randn(d, generator=g) * 1e3
    x = common + 1e-3 * torch.randn(n, d, generator=g)
    far = [2, 9]
    x[far] += 1e4
    want = sq_dists_reference(x)
    got = sq_dists(x, backend)
    # Distances are exact to rounding relative to the pair's distance from the pivot (an honest
    # update): every pair with an honest end to 1e-5 of itself; the two outliers, 1e4 from the
    # pivot and 0.08 apart, only to float32 rounding of their 3e11 squared norms.
    pair_ok = torch.ones(n, n, dtype=torch.bool)
    pair_ok[2, 9] = pair_ok[9, 2] = False
    pair_ok.fill_diagonal_(False)
    assert_close(got[pair_ok], want[pair_ok], rtol=1e-5, atol=0.0)
    assert_close(got[2, 9], want[2, 9], rtol=0.0, atol=1e-6 * float(want.max()))
    assert krum_select(x, f, backend=backend) == krum_select_reference(x, f)


@pytest.mark.parametrize("n", [2, 5, 31, 67])
def test_distances_match_the_reference(backend: str, n: int) -> None:
    x = make_updates(n, 517, torch.float16, seed=n)
    got = sq_dists(x, backend)
    assert got.dtype == torch.float64 and got.shape == (n, n)
    assert torch.equal(got, got.T) and bool((got.diagonal() == 0).all())
    assert_close(got, sq_dists_reference(x), rtol=1e-5, atol=1e-9)


def test_native_distances_without_the_extension(monkeypatch: pytest.MonkeyPatch) -> None:
    # Without bcfl_engine._C the native path runs GEMM panels through torch's BLAS.
    from bcfl_engine.errors import BackendUnavailable
    from bcfl_engine.rules import _distances

    def missing() -> None:
        raise BackendUnavailable("not built")

    x = make_updates(67, 4099, torch.bfloat16, seed=4)  # two row panels, two column blocks
    with_ext = _distances.sq_dists_native(x)
    monkeypatch.setattr(_distances, "native", missing)
    without = _distances.sq_dists_native(x)
    want = sq_dists_reference(x)
    assert_close(without, want, rtol=1e-5, atol=1e-9)
    assert_close(with_ext, want, rtol=1e-5, atol=1e-9)


def test_triton_gram_sums_splits_and_tile_pairs() -> None:
    pytest.importorskip("triton")
    from bcfl_engine.kernels._distances import gram

    x = make_updates(70, 1500, seed=1)
    p = x[3].clone()
    c = (x - p).double()
    got = gram(x, p, split_cols=700)  # 3 splits (the last one short) x 3 tile pairs of 64 rows
    assert_close(torch.triu(got), torch.triu(c @ c.T), rtol=1e-5, atol=1e-3)


def test_krum_rejects_bad_input() -> None:
    x = make_updates(6, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f \+ 2.*n=6, f=2"):
        krum(x, f=2)
    for bad in (-1, 1.5, True, None):
        with pytest.raises(InvalidArgument, match="f must be an int"):
            krum(x, f=bad)  # type: ignore[arg-type]
    with pytest.raises(PreconditionError):
        krum_select(x, 2)
    x[4, 3] = float("inf")
    with pytest.raises(NonFiniteUpdate, match="update 4"):
        krum(x, f=1)
    with pytest.raises(InvalidArgument, match="2-D"):
        krum(torch.ones(5), f=0)


def test_aggregate_runs_krum_by_name() -> None:
    x = make_updates(9, 40, seed=2)
    assert torch.equal(be.aggregate(x, rule="krum", f=3), krum_reference(x, 3))


def test_identical_updates_give_the_reference_update(backend: str) -> None:
    # Byzantine clients sending one identical update (here the winners): which copy wins may
    # differ with rounding of exactly tied scores, the returned update may not.
    x = make_updates(11, 200, seed=5)
    x[[0, 3, 5, 8]] = x[0] * 0.01
    got = krum(x, f=3, backend=backend)
    assert torch.equal(got, krum_reference(x, 3)) and torch.equal(got, x[0])


@pytest.mark.parametrize("row", [0, 5], ids=["first", "middle"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_krum_names_the_non_finite_update_without_a_scan_of_its_own(
    backend: str, row: int, value: float
) -> None:
    # The check is read off what the rule computes anyway (see its docstring); only then are
    # rows scanned, to name the culprit.
    x = make_updates(9, 300, seed=6)
    x[row, 123] = value
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        krum(x, f=2, backend=backend)
