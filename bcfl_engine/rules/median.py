"""Coordinate-wise median: the robust aggregate that tolerates f < n/2 Byzantine clients.

Yin, Chen, Kannan and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: ``out[j] = median_i x[i, j]`` over ``[n_clients, dim]`` updates.
Each coordinate stays within the range of the honest values as long as ``n > 2f``. For even
``n`` the median is the mean of the two middle values (as numpy and ``torch.quantile``; note that
``torch.median`` returns the lower one).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from ..backends import Kernel, dispatch, native
from ..updates import all_finite
from ._common import check_finite, check_rule_input, contiguous, raise_nonfinite


def median_reference(x: torch.Tensor, f: int = 0, check: bool = False) -> torch.Tensor:
    """Pure-torch coordinate-wise median of ``x`` ``[n, d]``; float32 ``[d]``. ``f`` is unused.
    The two middle values of an even ``n`` are averaged in float64: their float32 sum
    overflows near 3e38. ``check``: reject non-finite input first (a scan of its own)."""
    if check:
        check_finite(x, "median")
    s = x.float().sort(dim=0).values
    n = s.shape[0]
    if n % 2:
        return s[n // 2].clone()
    return ((s[n // 2 - 1].double() + s[n // 2].double()) / 2).float()


def finite_columns(
    out: torch.Tensor, x: torch.Tensor, reference: Callable[..., torch.Tensor], *args: Any
) -> torch.Tensor:
    """``out`` from a kernel that adds in float32, with the columns where that overflowed
    (values near 3e38) taken from ``reference(x[:, cols], *args)``, which adds in float64. A
    column of non-finite input stays non-finite. Costs a look at ``out`` ``[d]``."""
    if all_finite(out):  # a float32 sum: far cheaper than isfinite() over [d]
        return out
    bad = ~torch.isfinite(out)
    if bool(bad.any()):
        cols = bad.nonzero().reshape(-1)
        out[cols] = reference(x[:, cols], *args)
    return out


def _median_native(x: torch.Tensor, f: int = 0, check: bool = False) -> torch.Tensor:
    x = contiguous(x)
    out = torch.empty(x.shape[1], dtype=torch.float32)
    if not native().median(x, out) and check:
        raise_nonfinite(x, "median")
    return finite_columns(out, x, median_reference)


def _median_triton(x: torch.Tensor, f: int = 0, check: bool = False) -> torch.Tensor:
    from ..kernels.median import median as median_kernel

    x = contiguous(x)
    out, finite = median_kernel(x)
    if not finite and check:
        raise_nonfinite(x, "median")
    return finite_columns(out, x, median_reference)


def triton_row_limit(x: torch.Tensor) -> str | None:
    """Why the Triton bisection (median and trimmed_mean) cannot take ``x``, or None."""
    from ..kernels.median import MAX_ROWS

    if x.shape[0] > MAX_ROWS:
        return f"the Triton kernel holds all rows of a column block in registers: n <= {MAX_ROWS}; got n={x.shape[0]}"
    return None


KERNELS = (
    Kernel("torch", median_reference),
    Kernel("native", _median_native, needs="cpp"),
    Kernel("triton", _median_triton, limits=triton_row_limit),
)


def median(
    x: torch.Tensor, *, f: int = 0, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """Coordinate-wise median of ``x`` ``[n, d]`` -> float32 ``[d]``.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16 (computed in float32).
    f : the number of Byzantine clients to tolerate; the median needs ``n > 2f``.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. It cannot be read off the result (the median of a
        column ignores a NaN or an infinity among its extremes), so the fast paths fold it into
        their one read of ``x``: the tile copy adds ``v - v`` (0, or NaN for NaN and inf) per
        value; only a non-finite flag makes the rows be scanned, to name the culprit. The torch
        reference scans first.
    """
    x, f = check_rule_input(x, f, "median", check=False)
    return dispatch("median", KERNELS, x, backend, f, check=check)
