"""Geometric median by smoothed Weiszfeld iterations (RFA).

Pillutla, Kakade, Harchaoui, "Robust Aggregation for Federated Learning", IEEE TSP 2022.
The geometric median of ``[n_clients, dim]`` updates with weights ``alpha`` minimizes
``g(v) = sum_i alpha_i ||v - x_i||``. Its breakdown point is 1/2: fewer than half the
clients (``n > 2f``) cannot move it arbitrarily far. RFA's smoothed Weiszfeld iteration:

    a_i = alpha_i / max(eps, ||v - x_i||),   v <- sum_i a_i x_i / sum_i a_i

Two choices make the result independent of how far an outlier is (a client at 1e12 or 1e30
leaves it where a client at 1e3 does, up to ``tol``):

- the start. From the weighted mean, which one client at ``R`` drags ``R / n`` away, each
  Weiszfeld step only divides that offset by about ``n - 1`` (``log2(1e30) = 100`` steps at
  ``n = 3``). So the first step instead averages the clients within the weighted median of the
  distances to the mean: with ``n > 2f`` and far outliers these are the honest ones (they sit
  ``f R / n`` from the mean, the outliers ``(n - f) R / n``). Weiszfeld converges from any
  start; this one only saves the steps.
- the stopping rule: stop when a step moves ``v`` by at most ``tol`` times the weighted median
  distance of the clients to ``v``, a scale of the honest clients. RFA's rule (a relative change
  of ``g`` below ``tol``) stops at once when one far client dominates ``g``: 2.6e3 off the
  median of the others with a client at 1e12.

Squared distances are summed in float32 by the fast paths; a row whose sum overflows or falls
where float32 squares underflow (a client at 1e19, or within 1e-10 of ``v``) is summed again
in float64 (:func:`~._common.exact_sq_dists`), so finite input never gives an infinite or zero distance.

Each step is one fused pass over ``x`` (:func:`combine_step`): it forms the new point and, from
the same column tile, every client's distance to it, which the next step's weights need. So
``k`` steps read ``x`` ``k + 1`` times. Centered clipping uses the same step.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..backends import Kernel, dispatch, native
from ..updates import all_finite
from ._common import (
    RECHECK_BELOW,
    check_count,
    check_f,
    check_positive,
    check_updates,
    check_weights,
    contiguous,
    exact_sq_dists,
    normalized_weights,
    raise_nonfinite,
    sq_dists64,
)

# step(x, coef [n], beta, v_in [d] float32 or None, with_dist)
#   -> (beta * v_in + sum_i coef_i x_i, squared distances [n] float64; empty without with_dist)
Step = Callable[
    [torch.Tensor, torch.Tensor, float, torch.Tensor | None, bool],
    tuple[torch.Tensor, torch.Tensor],
]


def weighted_median(values: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """The smallest value with at least half of the weight ``w`` (sums to 1) at or below it."""
    s, order = values.sort()
    k = int(
        torch.searchsorted(w[order].cumsum(0), torch.tensor(0.5, dtype=w.dtype, device=w.device))
    )
    return s[min(k, s.numel() - 1)]


def _length(diff: torch.Tensor) -> float:
    """``||diff||`` of a float32 ``[d]``: a float32 dot product (0.26 ms at d = 1M against
    1.9 ms in float64, 15% of a step at n = 64), in float64 where float32 squares overflowed
    or may have underflowed."""
    sq = float(torch.dot(diff, diff))
    if not RECHECK_BELOW <= sq < math.inf:
        sq = float(sq_dists64(diff[None, :])[0])
    return math.sqrt(sq)


def step_torch(
    x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The step in plain torch: the combination in float32, distances in float64."""
    v = (coef.float()[:, None] * x.float()).sum(dim=0)
    if v_in is not None:
        v = v + beta * v_in.float()
    return v, sq_dists64(x, v) if with_dist else v.new_empty(0, dtype=torch.float64)


def weiszfeld(
    x: torch.Tensor,
    w: torch.Tensor,
    eps: float,
    max_iter: int,
    tol: float,
    step: Step,
) -> tuple[torch.Tensor, int]:
    """Smoothed Weiszfeld with normalized float64 weights ``w``: ``(v, steps run)``.

    The weighted mean, then the mean of the clients nearest to it (the first step), then
    Weiszfeld steps until one moves ``v`` by at most ``tol`` times the weighted median distance.
    A non-finite mean (a NaN or an infinity in some row, as every weight is > 0) is returned at
    once, as the rule's result.
    """
    v, d2 = step(x, w, 0.0, None, True)
    if not all_finite(v):
        return v, 0
    dist = d2.sqrt()
    near = w * (dist <= weighted_median(dist, w))
    v, d2 = step(x, near / near.sum(), 0.0, None, True)
    steps = 1
    while steps < max_iter:
        dist = d2.sqrt()
        a = w / dist.clamp(min=eps)
        prev = v
        v, d2 = step(x, a / a.sum(), 0.0, None, True)
        steps += 1
        moved = _length(v - prev)
        if moved <= tol * float(weighted_median(d2.sqrt(), w)):
            break
    return v, steps


def geometric_median_reference(
    x: torch.Tensor,
    weights: torch.Tensor | None = None,
    *,
    f: int = 0,
    eps: float = 1e-6,
    max_iter: int = 100,
    tol: float = 1e-6,
) -> torch.Tensor:
    """Pure-torch smoothed Weiszfeld on ``x`` ``[n, d]`` -> float32 ``[d]``: :func:`weiszfeld`
    with :func:`step_torch`.

    Combines in float32; distances, weights and the stopping test in float64 (float32
    distances of d = 1000 rows already jitter by 3e-8 relative, near the default ``tol``).
    ``f`` is only validated by :func:`geometric_median`.
    """
    w = normalized_weights(weights, x.shape[0]).to(x.device)
    return weiszfeld(x, w, eps, max_iter, tol, step_torch)[0]


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
    native().combine_distances(x, coef, float(beta), vin, v_out, dist2 if with_dist else None)
    return v_out, exact_sq_dists(x, v_out, dist2) if with_dist else dist2


def step_triton(
    x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The fused step in Triton (kernels/geometric_median.py); ``x`` contiguous."""
    from ..kernels.geometric_median import combine_distances

    v, d2 = combine_distances(x, coef.to(torch.float32), float(beta), v_in, with_dist)
    return v, exact_sq_dists(x, v, d2) if with_dist else d2


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
    max_iter : at most this many steps (each one pass over ``x``, plus one for the start).
    tol : stop when a step moves the point by at most ``tol`` times the weighted median
        distance of the clients to it.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. Costs no pass of its own: the first pass forms the
        weighted mean, which a NaN or an infinity in any row makes non-finite (every weight is
        > 0); the result is then that non-finite point, and only then are the rows scanned to
        name the culprit.

    Storage may be float32, float16 or bfloat16; all backends combine in float32, with
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
    out = dispatch(rule, KERNELS, x, backend, w, f=f, eps=eps, max_iter=max_iter, tol=tol)
    if check and not all_finite(out):
        raise_nonfinite(x, rule)
    return out
