"""Coordinate-wise trimmed mean: drop the f largest and f smallest values of every coordinate.

Yin, Chen, Kannan and Bartlett, "Byzantine-Robust Distributed Learning: Towards Optimal
Statistical Rates", ICML 2018: with each column of ``[n_clients, dim]`` sorted,
``out[j] = 1 / (n - 2f) * sum_{k=f}^{n-f-1} x_(k)[j]``. Tolerates ``f`` Byzantine clients when
``n > 2f``; ``f = 0`` is the plain mean, ``n = 2f + 1`` the median.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch, native
from ._common import check_finite, check_rule_input, contiguous, raise_nonfinite
from .median import finite_columns, triton_row_limit


def trimmed_mean_reference(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    """Pure-torch trimmed mean of ``x`` ``[n, d]``; float32 ``[d]``. Summed in float64: a float32
    sum of kept values near 3e38 overflows though their mean is finite. ``check``: reject
    non-finite input first (a scan of its own)."""
    if check:
        check_finite(x, "trimmed_mean")
    s = x.float().sort(dim=0).values
    return s[f : s.shape[0] - f].mean(dim=0, dtype=torch.float64).float()


def _trimmed_mean_native(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    x = contiguous(x)
    out = torch.empty(x.shape[1], dtype=torch.float32)
    if not native().trimmed_mean(x, f, out) and check:
        raise_nonfinite(x, "trimmed_mean")
    return finite_columns(out, x, trimmed_mean_reference, f)


def _trimmed_mean_triton(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    from ..kernels.trimmed_mean import trimmed_mean as trimmed_mean_kernel

    x = contiguous(x)
    out, finite = trimmed_mean_kernel(x, f)
    if not finite and check:
        raise_nonfinite(x, "trimmed_mean")
    return finite_columns(out, x, trimmed_mean_reference, f)


KERNELS = (
    Kernel("torch", trimmed_mean_reference),
    Kernel("native", _trimmed_mean_native, needs="cpp"),
    Kernel("triton", _trimmed_mean_triton, limits=triton_row_limit),
)


def trimmed_mean(
    x: torch.Tensor, *, f: int, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """Coordinate-wise trimmed mean of ``x`` ``[n, d]`` -> float32 ``[d]``.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16 (computed in float32).
    f : values dropped at each end of every coordinate; requires ``n > 2f``.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. It cannot be read off the result (the f largest and f
        smallest values of a column are dropped, an infinity among them too), so the fast
        paths fold it into their one read of ``x``, as :func:`~.median.median` does; the torch
        reference scans first.
    """
    x, f = check_rule_input(x, f, "trimmed_mean", check=False)
    return dispatch("trimmed_mean", KERNELS, x, backend, f, check=check)
