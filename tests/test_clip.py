"""clip: every backend x dtype x awkward shape against the torch reference, rows within the
bound unchanged bit for bit, clipped rows at the bound, and the error cases."""

from __future__ import annotations

import pytest
import torch
from helpers import assert_close, extreme_rows, make_updates, poisoned

import bcfl_engine as be
from bcfl_engine.errors import InvalidArgument, NonFiniteUpdate
from bcfl_engine.rules.clip import clip, clip_reference

# d = 4097 spans two Triton blocks of 4096 and C++ chunks of 1024 with a ragged tail.
SHAPES = [(1, 1), (2, 3), (7, 1000), (13, 4097), (131, 67)]
IDS = [f"n{n}-d{d}" for n, d in SHAPES]


def scaled_rows(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows whose norms spread over [0.25, 4] * sqrt(d), plus a zero row when n > 1."""
    x = make_updates(n, d, torch.float32, seed)
    x = x * torch.linspace(0.25, 4.0, n)[:, None]
    if n > 1:
        x[n // 2] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("n,d", SHAPES, ids=IDS)
def test_clip_matches_reference(backend: str, dtype: torch.dtype, n: int, d: int) -> None:
    x = scaled_rows(n, d, dtype, seed=n * d)
    max_norm = d**0.5  # about half the rows are over it
    got = clip(x, max_norm=max_norm, backend=backend)
    assert got.dtype == torch.float32 and got.shape == (n, d)
    # Norms accumulate in float64 (fast paths) or float32 (reference): the scales differ by an
    # ulp or two of float32.
    assert_close(got, clip_reference(x, max_norm=max_norm), rtol=1e-5, atol=1e-6)


def test_clip_keeps_rows_within_and_bounds_the_others(backend: str, dtype: torch.dtype) -> None:
    n, d, max_norm = 11, 777, 20.0
    x = scaled_rows(n, d, dtype, seed=9)
    norms = torch.linalg.vector_norm(x.double(), dim=1)
    assert bool((norms < max_norm * 0.99).any()) and bool((norms > max_norm * 1.01).any())
    got = clip(x, max_norm=max_norm, backend=backend)
    inside = norms < max_norm * 0.99  # away from the bound, where float32 and float64 agree
    assert torch.equal(got[inside], x[inside].float())  # unchanged, bit for bit
    out_norms = torch.linalg.vector_norm(got.double(), dim=1)
    over = norms > max_norm * 1.01
    assert_close(out_norms[over], torch.full((int(over.sum()),), max_norm), rtol=1e-6, atol=0)
    # Clipping only shortens: every clipped row keeps its direction.
    cos = torch.nn.functional.cosine_similarity(got[over].double(), x[over].double(), dim=1)
    assert bool((cos > 1 - 1e-6).all())


def test_clip_as_a_pre_step_of_aggregate() -> None:
    x = torch.tensor([[30.0, 40.0], [0.3, 0.4], [-3.0, 0.0]])
    out = be.aggregate(x, rule="mean", pre=[("clip", {"max_norm": 1.0})], backend="torch")
    # Rows become (0.6, 0.8), (0.3, 0.4) and (-1, 0): their mean.
    assert_close(out, torch.tensor([-0.1 / 3, 1.2 / 3]))


def test_clip_rejects_bad_input() -> None:
    x = make_updates(3, 4)
    for bad in (0.0, -1.0, float("nan"), float("inf"), "1", True):
        with pytest.raises(InvalidArgument, match="max_norm must be"):
            clip(x, max_norm=bad)  # type: ignore[arg-type]
    with pytest.raises(InvalidArgument, match="2-D"):
        clip(torch.ones(4), max_norm=1.0)
    x[0, 0] = float("-inf")
    with pytest.raises(NonFiniteUpdate, match="update 0"):
        clip(x, max_norm=1.0)
    assert clip(x, max_norm=1.0, check=False).shape == (3, 4)


@pytest.mark.parametrize("n,d", [(7, 1000), (13, 4097)], ids=["n7-d1000", "n13-d4097"])
def test_inplace_clip_scales_x_itself_like_the_copy(backend: str, n: int, d: int) -> None:
    x = make_updates(n, d, torch.float32, seed=n + d) * 3
    x[0] *= 1e-3  # one row within the bound: it must come back bit for bit
    max_norm = float(d) ** 0.5
    expected = clip(x, max_norm=max_norm, backend=backend)
    row0 = x[0].clone()
    got = clip(x, max_norm=max_norm, inplace=True, backend=backend)
    assert got.data_ptr() == x.data_ptr()
    assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(x[0], row0)


def test_inplace_clip_needs_contiguous_float32() -> None:
    with pytest.raises(InvalidArgument, match="inplace needs a contiguous float32"):
        clip(make_updates(3, 4, torch.float16), max_norm=1.0, inplace=True)
    with pytest.raises(InvalidArgument, match="not contiguous"):
        clip(make_updates(4, 3).t(), max_norm=1.0, inplace=True)


def clip64(x: torch.Tensor, max_norm: float) -> torch.Tensor:
    """The float64 oracle: exact norms, scale and product, rounded to float32 once."""
    x64 = x.double()
    norms = torch.linalg.vector_norm(x64, dim=1)
    scale = torch.where(norms > max_norm, max_norm / norms, torch.ones_like(norms))
    return (x64 * scale[:, None]).float()


@pytest.mark.parametrize("max_norm", [1.0, 1e-35, 1e35], ids=["1", "1e-35", "1e35"])
@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_clip_of_extreme_magnitudes_matches_float64(
    backend: str, max_norm: float, inplace: bool
) -> None:
    # Rows at 1e38, 1e30, 1e19 (float32 squares overflow: the norm would be inf and the row
    # zeroed) and 1e-30 (squares underflow: the norm would be 0 and the row never clipped),
    # with bounds that make the scale subnormal in float32 (1e-35 / 1e38).
    x = extreme_rows(10, 1000, seed=3)
    want = clip64(x, max_norm)
    src = x.clone()
    got = clip(src, max_norm=max_norm, backend=backend, inplace=inplace)
    assert bool(torch.isfinite(got).all())
    # Where the float32 scale is normal: one rounding of the scale and one of the product,
    # a few ulps. Subnormal results (bound 1e-35 over d = 1000 terms) keep fewer bits: atol.
    assert_close(got, want, rtol=1e-6, atol=1e-44)
    assert_close(got, clip_reference(x, max_norm=max_norm), rtol=1e-6, atol=1e-44)
    norms = torch.linalg.vector_norm(got.double(), dim=1)
    assert bool((norms <= max_norm * (1 + 1e-5)).all())
    if max_norm == 1.0:  # every row but the tiny ones is clipped to the bound, none to 0
        big = torch.linalg.vector_norm(x.double(), dim=1) > 1.0
        assert_close(norms[big], torch.full((int(big.sum()),), 1.0, dtype=torch.float64), rtol=1e-5)


@pytest.mark.parametrize("value", [float("nan"), float("inf")], ids=str)
@pytest.mark.parametrize("inplace", [False, True], ids=["copy", "inplace"])
def test_clip_names_the_non_finite_row_and_leaves_x_unchanged(
    backend: str, value: float, inplace: bool
) -> None:
    # The check is read off the row norms the kernel returns; a non-finite row is not scaled,
    # so in place x is unchanged when the error is raised.
    x = poisoned(make_updates(6, 700, seed=2) * 10, 3, value)
    before = x.clone()
    with pytest.raises(NonFiniteUpdate, match="update 3 "):
        clip(x, max_norm=1.0, backend=backend, inplace=inplace)
    assert torch.equal(x.isnan(), before.isnan())
    assert torch.equal(torch.nan_to_num(x), torch.nan_to_num(before))
