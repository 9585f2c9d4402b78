"""Geometric median by smoothed Weiszfeld iterations (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022.
The geometric median of ``[n_clients, dim]`` updates with weights ``alpha`` minimizes
``g(v) = sum_i alpha_i ||v - x_i||``. Its breakdown point is 1/2: fewer than half the
clients (``n > 2f``) cannot move it arbitrarily far. RFA's smoothed Weiszfeld iteration:

    a_i = alpha_i / max(eps, ||v - x_i||),   v <- sum_i a_i x_i / sum_i a_i

from the weighted mean, until ``|g(v_prev) - g(v)| <= tol * g(v)`` or ``max_iter`` steps.

Each step is one fused pass over ``x`` (:func:`combine_step`): it forms the new point and, from
the same column tile, every client's distance to it, which the next step's weights need. So
``k`` iterations read ``x`` ``k + 1`` times. Centered clipping uses the same step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backends import Kernel, dispatch, native
from ._common import (
    DTYPE_CODE,
    check_count,
    check_f,
    check_finite,
    check_positive,
    check_updates,
    check_weights,
    contiguous,
    normalized_weights,
)

# step(x, coef [n], beta, v_in [d] float32 or None, with_dist)
#   -> (beta * v_in + sum_i coef_i x_i, squared distances [n] float64; empty without with_dist)
Step = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None, bool],
    tuple[torch.Tensor, torch.Tensor],
]


def geometric_median_reference(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    eps: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Pure-torch smoothed Weiszfeld on ``x`` ``[n, d]`` -> float32 ``[d]``.

    Computes in float32; distances, weights and the objective in float64 (float32 distances
    of d = 1000 rows already jitter the objective by 3e-8 relative, near the default ``tol``).
    ``f`` is only validated by :func:`geometric_median`.
    """
    xf = x.float()
    w = normalized_weights(weights, x.shape[0]).to(x.device)
    v = (w.float()[:, None] * xf).sum(dim=0)
    dist = torch.linalg.vector_norm(xf - v, dim=1, dtype=torch.float64)
    obj = float((w * dist).sum())
    for _ in range(max_iter):
        a = w / dist.clamp(min=eps)
        v = ((a / a.sum()).float()[:, None] * xf).sum(dim=0)
        dist = torch.linalg.vector_norm(xf - v, dim=1, dtype=torch.float64)
        prev, obj = obj, float((w * dist).sum())
        if abs(prev - obj) <= tol * obj:
            break
    return v


# ---- the fused step, per backend ------------------------------------------------------------


def step_native(
    x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused step in C++ (csrc/geometric_median.cpp); ``x`` contiguous on the CPU."""
    n, d = x.shape
    coef = coef.to(torch.float32).contiguous()
    v_out = torch.empty(d, dtype=torch.float32)
    dist2 = torch.empty(n if with_dist else 0, dtype=torch.float64)
    vin = v_in.contiguous() if v_in is not None else None
    native().combine_distances(
        DTYPE_CODE[x.dtype],
        x.data_ptr(),
        n,
        d,
        coef.data_ptr(),
        float(beta),
        vin.data_ptr() if vin is not None else 0,
        v_out.data_ptr(),
        dist2.data_ptr() if with_dist else 0,
    )
    return v_out, dist2


def step_triton(
    x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused step in Triton (kernels/geometric_median.py); ``x`` contiguous."""
    from ..kernels.geometric_median import combine_distances

    return combine_distances(x, coef.to(torch.float32), float(beta), v_in, with_dist)


def weiszfeld(
    x: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    step: Step,
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld with normalized float64 weights ``w``: ``(v, iterations run)``."""
    v, d2 = step(x, w.float(), 0.0, None, True)
    dist = d2.sqrt()
    obj = float((w * dist).sum())
    steps = 0
    while steps < max_iter:
        a = w / dist.clamp(min=eps)
        v, d2 = step(x, a / a.sum(), 0.0, None, True)
        steps += 1
        dist = d2.sqrt()
        prev, obj = obj, float((w * dist).sum())
        if abs(prev - obj) <= tol * obj:
            break
    return v, steps


def _fast(step: Step) -> Callable[..., torch.Tensor]:
    def run(
        x: torch.Tensor,
        weights: torch.Tensor | None = None,
        *,
        f: int = 0,
        eps: float = 1e-6,
        max_iter: int = 100,
        tol: float = 1e-6,
    ) -> torch.Tensor:
        w = normalized_weights(weights, x.shape[0]).to(x.device)
        return weiszfeld(contiguous(x), w, eps, max_iter, tol, step)[0]

    return run


KERNELS = (
    Kernel("torch", geometric_median_reference),
    Kernel("native", _fast(step_native), needs="cpp"),
    Kernel("triton", _fast(step_triton)),
)


def geometric_median(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    eps: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Weighted geometric median of ``x`` ``[n, d]`` -> float32 ``[d]`` (smoothed Weiszfeld).

    Parameters
    ----------
    weights : ``[n]`` positive client weights ``alpha`` (e.g. sample counts); uniform if None.
    f : Byzantine clients tolerated; requires ``n > 2f`` (the breakdown point is 1/2).
    eps : smoothing ``nu`` of RFA: distances below ``eps`` count as ``eps`` (no division by 0
        when the iterate lands on a client).
    max_iter : at most this many Weiszfeld steps (each one pass over ``x``).
    tol : stop when the objective changes by at most ``tol`` times itself.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates (an O(n d) scan; off when the batch was validated).

    Storage may be float32, float16 or bfloat16; all backends compute in float32, with
    distances accumulated and weights formed in float64.
    """
    rule = "geometric_median"
    x = check_updates(x, rule)
    n = x.shape[0]
    check_f(f, n, rule)
    w = check_weights(weights, n, rule)
    eps = check_positive(eps, "eps", rule)
    max_iter = check_count(max_iter, "max_iter", rule)
    tol = check_positive(tol, "tol", rule, allow_zero=True)
    if check:
        check_finite(x, rule)
    return dispatch(rule, KERNELS, x, backend, w, f=f, eps=eps, max_iter=max_iter, tol=tol)
