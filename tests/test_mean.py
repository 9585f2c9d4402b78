"""mean: every backend x dtype x awkward shape against the torch reference."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, make_updates, poisoned

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.mean import mean, mean_reference

SHAPES = [(1, 1), (2, 3), (7, 1000), (13, 4099), (64, 2048 * 3 + 5)]


@pytest.mark.parametrize("n,d", SHAPES, ids=[f"n{n}-d{d}" for n, d in SHAPES])
@pytest.mark.parametrize("weighted", [False, True], ids=["uniform", "weighted"])
def test_mean_matches_reference(
    backend: str, dtype: torch.dtype, n: int, d: int, weighted: bool
) -> None:
    x = make_updates(n, d, dtype, seed=n * d)
    w = torch.rand(n, dtype=torch.float64) + 0.1 if weighted else None
    got = mean(x, w, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (d,)
    assert_close(got, mean_reference(x, w), rtol=1e-5, atol=1e-6)


def test_mean_reference_is_the_weighted_average() -> None:
    x = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    assert_close(mean_reference(x, torch.tensor([1.0, 3.0])), torch.tensor([2.5, 5.0]))


def test_mean_rejects_bad_input() -> None:
    x = make_updates(4, 5)
    with pytest.raises(PreconditionError, match="f must be 0"):
        mean(x, f=1)
    with pytest.raises(InvalidArgument, match="weights must be"):
        mean(x, torch.tensor([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(InvalidArgument, match=r"weights must be \[n=4\]"):
        mean(x, torch.ones(3))
    x[2, 1] = float("nan")
    with pytest.raises(NonFiniteUpdate, match="update 2"):
        mean(x)
    with pytest.raises(InvalidArgument, match="2-D"):
        mean(torch.ones(3))


def test_aggregate_returns_the_structure_of_one_update() -> None:
    sd = [{"w": torch.full((2, 3), float(i)), "b": torch.full((3,), 2.0 * i)} for i in range(4)]
    out = be.aggregate(sd, rule="mean")
    assert set(out) == {"w", "b"} and out["w"].shape == (2, 3)
    assert_close(out["w"], torch.full((2, 3), 1.5))
    assert_close(out["b"], torch.full((3,), 3.0))
    import numpy as np

    nd = [
        [np.full((2,), i, dtype=np.float32), np.full((1, 1), -i, dtype=np.float64)]
        for i in range(3)
    ]
    out_nd = be.aggregate(nd, rule="mean", weights=[1, 1, 2])
    assert out_nd[1].dtype == np.float64 and out_nd[1].shape == (1, 1)
    np.testing.assert_allclose(out_nd[0], [1.25, 1.25], rtol=1e-6)
    arr = np.arange(6, dtype=np.float32).reshape(3, 2)
    np.testing.assert_allclose(be.aggregate(arr), [2.0, 3.0])


@pytest.mark.parametrize("row", [0, 4, 6], ids=["first", "middle", "last"])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_mean_names_the_non_finite_update_from_its_result(
    backend: str, row: int, value: float
) -> None:
    # The check is read off the result (every weight > 0: a NaN or inf row makes it
    # non-finite); the rescan names the row, whichever backend made the result.
    x = poisoned(make_updates(7, 1000, seed=1), row, value)
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        mean(x, backend=backend)
    # A weight that rounds to 0 in float32 still propagates the NaN (0 * inf = nan).
    w = torch.ones(7, dtype=torch.float64)
    w[row] = 1e-60
    with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
        mean(x, w, backend=backend)
    assert not bool(torch.isfinite(mean(x, backend=backend, check=False)).all())


def test_mean_of_rows_near_the_float32_maximum_is_finite(backend: str) -> None:
    # A float32 sum of rows at 3e38 can round past the maximum; their mean cannot.
    x = torch.full((5, 300), 3.4e38)
    x[1] = -3.4e38
    got = mean(x, backend=backend)
    want = x.double().mean(dim=0).float()
    assert_close(got, want, rtol=1e-6, atol=0)
