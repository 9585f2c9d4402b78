"""median: every backend x dtype x awkward shape against the torch reference, exactly.

The median selects stored values (exact in float32 after the float16/bfloat16 widening), and
for even n averages two of them as ``(a + b) / 2`` in float32 in every backend: the results
must be bit-equal to the reference, so the tolerance is 0.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import backend_params
from helpers import assert_close, make_updates, pick, skewed_columns, ties
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.median import median, median_reference

NS = [1, 2, 3, 5, 7, 13, 64, 97]
DS = [1, 7, 1000, 4099]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
# The Triton interpreter costs ~0.5 s per launch whatever the size: it runs every n in float32
# on d <= 1000, and the half dtypes (one widening load, shared by all shapes) on two shapes.
TRITON_MAX_D = 1000
TRITON_HALF_SHAPES = {(13, 7), (64, 1000)}


def grid() -> list:
    """(backend, dtype, n, d) cases, each backend with the skip marks of conftest."""
    cases = []
    for p in backend_params():
        name = p.values[0]
        for dname, dtype in DTYPES.items():
            if name == "torch" and dname != "f32":
                continue  # the torch backend is the reference: one dtype checks its dispatch
            for n in NS:
                for d in DS:
                    if name == "triton" and (
                        d > TRITON_MAX_D or (dname != "f32" and (n, d) not in TRITON_HALF_SHAPES)
                    ):
                        continue
                    cases.append(
                        pytest.param(
                            name, dtype, n, d, id=f"{name}-{dname}-n{n}-d{d}", marks=p.marks
                        )
                    )
    return cases


@pytest.mark.parametrize("backend_name,dtype_,n,d", grid())
def test_median_matches_reference(backend_name: str, dtype_: torch.dtype, n: int, d: int) -> None:
    # Distinct values and, in the same call, columns of small integers full of ties.
    x = torch.cat(
        [make_updates(n, d, dtype_, seed=n * 7919 + d), ties(n, d, dtype_, seed=n + d)], 1
    )
    got = median(x, backend=backend_name)
    assert got.dtype == torch.float32 and got.shape == (2 * d,)
    assert_close(got, median_reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("n", [5, 64, 97], ids=lambda n: f"n{n}")
def test_median_at_the_f_bound(backend: str, n: int) -> None:
    x = make_updates(n, 513, seed=n)
    f = (n - 1) // 2
    assert_close(median(x, f=f, backend=backend), median_reference(x), rtol=0, atol=0)


def test_median_reference_averages_the_middle_pair() -> None:
    # torch.median would return 2 (the lower middle value); numpy and the papers return 3.
    x = torch.tensor([[1.0], [5.0], [2.0], [4.0]])
    assert_close(median_reference(x), torch.tensor([3.0]), rtol=0, atol=0)
    y = make_updates(10, 50, seed=3)
    np.testing.assert_array_equal(median_reference(y).numpy(), np.median(y.numpy(), axis=0))


def test_median_ignores_byzantine_outliers(backend: str) -> None:
    # f = 3 of n = 8 updates at +-1e30: the median stays among the honest values.
    x = make_updates(8, 301, seed=11)
    x[:3] = torch.tensor([1e30, -1e30, 1e30])[:, None]
    got = median(x, f=3, backend=backend)
    assert_close(got, median_reference(x), rtol=0, atol=0)
    honest = x[3:]
    assert bool((got >= honest.min(0).values).all() and (got <= honest.max(0).values).all())


def test_median_on_signed_zeros_and_subnormals(backend: str) -> None:
    # -0 and +0 are equal values with different bit patterns; subnormals have tiny keys.
    vals = torch.tensor([-0.0, 0.0, 1e-45, -1e-45, 3e-39, -2.0, 7.0])
    g = torch.Generator().manual_seed(5)
    x = vals[torch.randint(0, len(vals), (12, 999), generator=g)]
    assert_close(median(x, backend=backend), median_reference(x), rtol=0, atol=0)


def test_median_of_a_strided_view(backend: str) -> None:
    x = make_updates(40, 9, seed=2).t()  # [9, 40], not contiguous
    assert_close(median(x, backend=backend), median_reference(x), rtol=0, atol=0)


# Values chosen to collide: signed zeros, subnormals, both float32 extremes, small integers.
AWKWARD = [0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 2.0, 3.4e38, -3.4e38, 0.5, -7.25]


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 40),
    d=st.integers(1, 70),
    data=st.data(),
)
def test_native_median_on_awkward_values(n: int, d: int, data: st.DataObject) -> None:
    pytest.importorskip("bcfl_engine._C")
    picks = data.draw(st.lists(st.integers(0, len(AWKWARD) - 1), min_size=n * d, max_size=n * d))
    x = torch.tensor([AWKWARD[i] for i in picks], dtype=torch.float32).reshape(n, d)
    want = median_reference(x)
    got = median(x, backend="native")
    # The even-n average of +-3.4e38 may overflow to inf in both: compare where finite.
    assert torch.equal(torch.isfinite(got), torch.isfinite(want))
    fin = torch.isfinite(want)
    assert_close(got[fin], want[fin], rtol=0, atol=0)
    assert torch.equal(got[~fin], want[~fin])


@pytest.mark.parametrize("n", [128, 129, 300, 1000], ids=lambda n: f"n{n}")
def test_native_median_on_skewed_columns(n: int) -> None:
    # From 128 rows on, the C++ search starts from pivots out of a sorted sample of rows and
    # then interpolates: columns where either goes wrong (sorted rows, ties, sparse, heavy
    # tails, outliers) must still give the exact median.
    pytest.importorskip("bcfl_engine._C")
    x = skewed_columns(n, 37, seed=n)
    assert_close(median(x, backend="native"), median_reference(x), rtol=0, atol=0)


@settings(max_examples=25, deadline=None)
@given(n=st.integers(128, 260), d=st.integers(1, 40), data=st.data())
def test_native_median_on_awkward_values_with_many_rows(
    n: int, d: int, data: st.DataObject
) -> None:
    pytest.importorskip("bcfl_engine._C")
    # n * d draws are too many for hypothesis to shrink: it draws the seed of the picks.
    x = pick(AWKWARD, n, d, seed=data.draw(st.integers(0, 2**32 - 1)))
    x = x.clamp(-1e30, 1e30)  # no +-3.4e38: the even-n average would overflow
    assert_close(median(x, backend="native"), median_reference(x), rtol=0, atol=0)


def test_median_rejects_bad_input() -> None:
    x = make_updates(4, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f.*n=4, f=2"):
        median(x, f=2)
    with pytest.raises(InvalidArgument, match="f must be an int >= 0"):
        median(x, f=-1)
    with pytest.raises(InvalidArgument, match="f must be an int >= 0"):
        median(x, f=1.5)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="2-D"):
        median(torch.ones(3))
    with pytest.raises(InvalidArgument, match="dtype"):
        median(torch.ones(3, 2, dtype=torch.float64))
    with pytest.raises(InvalidArgument, match="backend"):
        median(x, backend="cuda")
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[3, 0] = bad
        with pytest.raises(NonFiniteUpdate, match="update 3"):
            median(y)


def test_median_unchecked_non_finite_input_terminates(backend: str) -> None:
    # check=False promises no validation, not a result: it must still return, not hang.
    x = make_updates(9, 70, seed=4)
    x[0, :10] = float("nan")
    x[1, 10:20] = float("inf")
    out = median(x, backend=backend, check=False)
    assert out.shape == (70,)
    assert_close(out[20:], median_reference(x[:, 20:]), rtol=0, atol=0)


@pytest.mark.parametrize("backend", backend_params())
def test_median_of_values_near_the_float32_maximum_is_finite(backend: str) -> None:
    # The two middle values of an even n average to a finite value even where their float32
    # sum overflows: every backend gives the float64 average, rounded once.
    g = torch.Generator().manual_seed(4)
    x = 3.3e38 + 1e36 * torch.randn(8, 30, generator=g)
    x[:, ::4] *= -1
    s = x.double().sort(dim=0).values
    want = ((s[3] + s[4]) / 2).float()
    assert_close(median_reference(x), want, rtol=1e-7, atol=0)
    assert_close(median(x, f=1, backend=backend), want, rtol=1e-7, atol=0)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
def test_median_names_the_non_finite_update_from_its_one_read(
    backend: str, dtype: torch.dtype, value: float
) -> None:
    # The fast paths flag a NaN or an infinity while copying x into their tiles; the median
    # itself would hide it (one extreme value among 9). Row 0, a middle row, and the last
    # column (a partial group of lanes).
    for row, col in ((0, 0), (5, 33), (8, 69)):
        x = make_updates(9, 70, dtype, seed=3)
        x[row, col] = value
        assert bool(torch.isfinite(median(x, f=1, backend=backend, check=False)[:col]).all())
        with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
            median(x, f=1, backend=backend)
