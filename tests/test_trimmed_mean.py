"""trimmed_mean: every backend x dtype x awkward shape x f against the torch reference.

Tolerance: the kept values are the same in every backend (selection is exact), but their
float32 sum runs in another order (row by row in C++, a tree in Triton and torch): a few ulps
of the kept sum, far inside rtol 1e-5 / atol 1e-6 for values of size ~1 and n <= 97.
"""

from __future__ import annotations

import pytest
import torch
from conftest import backend_params
from helpers import assert_close, extreme_rows, make_updates, pick, skewed_columns, ties
from hypothesis import given, settings
from hypothesis import strategies as st

from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate, PreconditionError
from bcfl_engine.rules.median import median_reference
from bcfl_engine.rules.trimmed_mean import trimmed_mean, trimmed_mean_reference

NS = [1, 2, 3, 5, 7, 13, 64, 97]
DS = [1, 7, 1000, 4099]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
RTOL, ATOL = 1e-5, 1e-6
# The Triton interpreter costs ~1 s per launch (two searches): it runs float32 on d = 7 for
# every n and on d = 1000 for n = 64, with f in {0, 1, bound} (16 and 17 only matter to the
# C++ path), and the half dtypes (one widening load) on one shape.
TRITON_HALF = (64, 1000, 1)


def triton_runs(dname: str, n: int, d: int, f: int) -> bool:
    if dname != "f32":
        return (n, d, f) == TRITON_HALF
    return (d == 7 or (d == 1000 and n == 64)) and f in {0, 1, (n - 1) // 2}


def fs(n: int) -> list[int]:
    """f = 0, 1 and the bound (n - 1) // 2; at n = 97 also 16 and 17, where the C++ path
    switches from insertion lists to bisection."""
    out = {0, min(1, (n - 1) // 2), (n - 1) // 2}
    if n > 35:
        out |= {16, 17}
    return sorted(out)


def grid() -> list:
    """(backend, dtype, n, d, f) cases, each backend with the skip marks of conftest."""
    cases = []
    for p in backend_params():
        name = p.values[0]
        for dname, dtype in DTYPES.items():
            if name == "torch" and dname != "f32":
                continue  # the torch backend is the reference: one dtype checks its dispatch
            for n in NS:
                for d in DS:
                    for f in fs(n):
                        if name == "triton" and not triton_runs(dname, n, d, f):
                            continue
                        cases.append(
                            pytest.param(
                                name,
                                dtype,
                                n,
                                d,
                                f,
                                id=f"{name}-{dname}-n{n}-d{d}-f{f}",
                                marks=p.marks,
                            )
                        )
    return cases


@pytest.mark.parametrize("backend_name,dtype_,n,d,f", grid())
def test_trimmed_mean_matches_reference(
    backend_name: str, dtype_: torch.dtype, n: int, d: int, f: int
) -> None:
    # Distinct values and, in the same call, columns of small integers full of ties.
    x = torch.cat(
        [make_updates(n, d, dtype_, seed=n * 7919 + d), ties(n, d, dtype_, seed=n + d)], 1
    )
    got = trimmed_mean(x, f=f, backend=backend_name)
    assert got.dtype == torch.float32 and got.shape == (2 * d,)
    assert_close(got, trimmed_mean_reference(x, f), rtol=RTOL, atol=ATOL)


def test_trimmed_mean_reference_counts_ties_once() -> None:
    # Sorted [1, 1, 1, 5, 5]: drop one 1 and one 5, keep 1, 1, 5.
    x = torch.tensor([[5.0], [1.0], [1.0], [5.0], [1.0]])
    assert_close(trimmed_mean_reference(x, 1), torch.tensor([7.0 / 3.0]))


def test_trimmed_mean_keeps_ties_at_both_cuts(backend: str) -> None:
    x = torch.tensor([[5.0, 2.0], [1.0, 2.0], [1.0, 2.0], [5.0, 9.0], [1.0, -4.0], [3.0, 2.0]])
    want = torch.tensor([(1.0 + 1.0 + 3.0 + 5.0) / 4.0, 2.0])
    assert_close(trimmed_mean(x, f=1, backend=backend), want)


def test_trimmed_mean_at_the_bound_is_the_median(backend: str) -> None:
    for n in (7, 97):
        x = make_updates(n, 300, seed=n)
        got = trimmed_mean(x, f=(n - 1) // 2, backend=backend)
        assert_close(got, median_reference(x), rtol=0, atol=0)


@pytest.mark.parametrize("scale", [1e6, 1e30], ids=["1e6", "1e30"])
def test_trimmed_mean_drops_byzantine_outliers_without_cancellation(
    backend: str, scale: float
) -> None:
    # f = 2 outliers on each side, huge against the honest values: "sum all, subtract the
    # extremes" would lose every honest digit; summing only the kept values must not.
    x = make_updates(11, 257, seed=9)
    x[:2] = scale
    x[2:4] = -scale
    got = trimmed_mean(x, f=4, backend=backend)
    assert_close(got, x[4:].sort(0).values[2:-2].mean(0), rtol=RTOL, atol=ATOL)


def test_trimmed_mean_f0_is_the_mean(backend: str) -> None:
    x = make_updates(13, 1000, seed=1)
    assert_close(trimmed_mean(x, f=0, backend=backend), x.mean(0), rtol=RTOL, atol=ATOL)


def test_trimmed_mean_of_a_strided_view(backend: str) -> None:
    x = make_updates(40, 9, seed=2).t()  # [9, 40], not contiguous
    assert_close(
        trimmed_mean(x, f=2, backend=backend), trimmed_mean_reference(x, 2), rtol=RTOL, atol=ATOL
    )


# Values chosen to collide at the cuts: signed zeros, subnormals, small integers. (No huge
# values: a kept sum like -1e30 + 1 + 1e30 depends on the order of the additions.)
AWKWARD = [0.0, -0.0, 1e-45, -1e-45, 1.0, -1.0, 2.0, 0.5, -7.25]


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 40), d=st.integers(1, 70), data=st.data())
def test_native_trimmed_mean_on_awkward_values(n: int, d: int, data: st.DataObject) -> None:
    pytest.importorskip("bcfl_engine._C")
    f = data.draw(st.integers(0, (n - 1) // 2))
    picks = data.draw(st.lists(st.integers(0, len(AWKWARD) - 1), min_size=n * d, max_size=n * d))
    x = torch.tensor([AWKWARD[i] for i in picks], dtype=torch.float32).reshape(n, d)
    got = trimmed_mean(x, f=f, backend="native")
    assert_close(got, trimmed_mean_reference(x, f), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("n", [128, 129, 300, 1000], ids=lambda n: f"n{n}")
def test_native_trimmed_mean_on_skewed_columns(n: int) -> None:
    # From f = 17 the C++ path searches two cuts (sampled start, interpolation, snapping):
    # columns where that goes wrong must still keep exactly the right values. The tolerance
    # scales with each column's largest kept magnitude (the sum order differs).
    pytest.importorskip("bcfl_engine._C")
    x = skewed_columns(n, 29, seed=n)
    for f in sorted({17, n // 10, n // 3, (n - 1) // 2}):
        want = trimmed_mean_reference(x, f)
        got = trimmed_mean(x, f=f, backend="native")
        scale = x.sort(0).values[f : n - f].abs().amax(0)
        assert bool(((got - want).abs() <= 1e-5 * scale).all()), f"f={f}"


@settings(max_examples=25, deadline=None)
@given(n=st.integers(128, 260), d=st.integers(1, 40), data=st.data())
def test_native_trimmed_mean_on_awkward_values_with_many_rows(
    n: int, d: int, data: st.DataObject
) -> None:
    pytest.importorskip("bcfl_engine._C")
    f = data.draw(st.integers(17, (n - 1) // 2))
    # n * d draws are too many for hypothesis to shrink: it draws the seed of the picks.
    x = pick(AWKWARD, n, d, seed=data.draw(st.integers(0, 2**32 - 1)))
    got = trimmed_mean(x, f=f, backend="native")
    assert_close(got, trimmed_mean_reference(x, f), rtol=RTOL, atol=ATOL)


def test_trimmed_mean_rejects_bad_input() -> None:
    x = make_updates(6, 5)
    with pytest.raises(PreconditionError, match=r"n > 2f.*n=6, f=3"):
        trimmed_mean(x, f=3)
    with pytest.raises(InvalidArgument, match="f must be an int >= 0"):
        trimmed_mean(x, f=-1)
    with pytest.raises(InvalidArgument, match="f must be an int >= 0"):
        trimmed_mean(x, f=True)
    with pytest.raises(TypeError):
        trimmed_mean(x)  # type: ignore[call-arg]  # f has no default: the caller says it
    with pytest.raises(InvalidArgument, match="2-D"):
        trimmed_mean(torch.ones(3), f=0)
    for bad in (float("nan"), float("inf"), float("-inf")):
        y = x.clone()
        y[4, 2] = bad
        with pytest.raises(NonFiniteUpdate, match="update 4"):
            trimmed_mean(y, f=1)


def test_trimmed_mean_unchecked_non_finite_input_terminates(backend: str) -> None:
    # check=False promises no validation, not a result: it must still return, not hang.
    x = make_updates(9, 70, seed=4)
    x[0, :10] = float("nan")
    out = trimmed_mean(x, f=2, backend=backend, check=False)
    assert out.shape == (70,)
    assert_close(out[10:], trimmed_mean_reference(x[:, 10:], 2), rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("backend", backend_params())
def test_trimmed_mean_of_values_near_the_float32_maximum_is_finite(backend: str) -> None:
    # Kept values near 3e38 overflow a float32 sum; the mean of them is finite. The reference
    # sums in float64; the fast paths redo the columns whose float32 sum overflowed.
    g = torch.Generator().manual_seed(8)
    x = 3.0e38 + 1e36 * torch.randn(9, 40, generator=g)
    x[:, ::3] *= -1  # columns of both signs
    x[:, 1::5] = extreme_rows(9, 8, seed=2)  # and every other magnitude
    want = x.double().sort(dim=0).values[2:7].mean(dim=0).float()
    assert_close(trimmed_mean_reference(x, 2), want, rtol=1e-6, atol=0)
    assert_close(trimmed_mean(x, f=2, backend=backend), want, rtol=1e-6, atol=0)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")], ids=str)
@pytest.mark.parametrize("f", [0, 1, 3], ids=["f0", "f1", "f3"])
def test_trimmed_mean_names_the_non_finite_update_from_its_one_read(
    backend: str, value: float, f: int
) -> None:
    # Dropped as an extreme (f >= 1) or kept (f = 0), a NaN or an infinity is flagged by the
    # tile copy of the fast paths, and named.
    for row, col in ((0, 0), (4, 40), (8, 69)):
        x = make_updates(9, 70, seed=5)
        x[row, col] = value
        with pytest.raises(NonFiniteUpdate, match=f"update {row} "):
            trimmed_mean(x, f=f, backend=backend)
