"""Weighted mean (FedAvg): the baseline aggregate, with no Byzantine tolerance.

McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized Data",
AISTATS 2017: ``out = sum_i w_i x_i / sum_i w_i`` over ``[n_clients, dim]`` updates. One
client can move it arbitrarily far, so ``f`` must be 0.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch, native
from ..updates import all_finite
from ._common import (
    check_f,
    check_updates,
    check_weights,
    contiguous,
    normalized_weights,
    raise_nonfinite,
)


def mean_reference(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Pure-torch weighted mean of the rows of ``x`` ``[n, d]``; float32 ``[d]``."""
    w = _normalized(weights, x.shape[0]).to(x.device)
    return (w[:, None] * x.float()).sum(dim=0)


def _normalized(weights: torch.Tensor | None, n: int) -> torch.Tensor:
    return normalized_weights(weights, n).to(torch.float32)


def _mean_native(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    x = contiguous(x)
    n, d = x.shape
    w = _normalized(weights, n)
    out = torch.empty(d, dtype=torch.float32)
    native().weighted_mean(x, w, out)
    return out


def _mean_triton(x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    from ..kernels.mean import weighted_mean

    return weighted_mean(contiguous(x), _normalized(weights, x.shape[0]).to(x.device))


KERNELS = (
    Kernel("torch", mean_reference),
    Kernel("native", _mean_native, needs="cpp"),
    Kernel("triton", _mean_triton),
)


def mean(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Weighted mean of ``x`` ``[n, d]`` -> float32 ``[d]``.

    Parameters
    ----------
    weights : ``[n]`` positive weights (e.g. sample counts); uniform if None.
    f : must be 0: the mean tolerates no Byzantine client.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. Costs no pass of its own: every weight is > 0 (a weight
        that rounds to 0 in float32 still gives ``0 * inf = 0 * nan = nan``), so a NaN or an
        infinity in any update makes the result non-finite; only then are the updates scanned,
        to name the culprit.
    """
    x = check_updates(x, "mean")
    check_f(f, x.shape[0], "mean")
    w = check_weights(weights, x.shape[0], "mean")
    out = dispatch("mean", KERNELS, x, backend, w)
    # all_finite: a float32 sum of out (1M values: 0.04 ms against 1.5 ms for isfinite().all(),
    # 15% of the mean itself at n=64, d=1M).
    if all_finite(out):
        return out
    if check:
        raise_nonfinite(x, "mean")
    if not all_finite(x):
        return out  # unchecked non-finite input: its non-finite mean, as asked
    # Finite updates near the float32 maximum whose float32 sum rounded past it: the mean is
    # at most the largest |x|, so in float64 it is finite.
    w64 = normalized_weights(w, x.shape[0]).to(x.device)
    return (w64[:, None] * x.double()).sum(dim=0).float()
