"""Centered clipping.

Karimireddy, He, Jaggi, "Learning from History for Byzantine Robust Optimization", ICML 2021.
From a center ``v`` (the previous round's aggregate, or momentum, in a real run), repeat
``n_iter`` times over ``[n_clients, dim]`` updates:

    v <- v + (1/n) sum_i (x_i - v) * min(1, tau / ||x_i - v||)

A Byzantine client moves ``v`` by at most ``tau / n`` per iteration, whatever it sends; with
``n > 2f`` the honest majority pulls ``v`` toward the honest mean.

The step is the fused pass of :mod:`bcfl_engine.rules.geometric_median`, with coefficients
``c_i = min(1, tau / ||x_i - v||) / n`` and ``beta = 1 - sum_i c_i``:
``v + sum_i c_i (x_i - v) = beta * v + sum_i c_i x_i``. One pass over ``x`` gives the distances
to the center, then each iteration is one pass that also measures the distances to the new
``v`` (skipped on the last), so ``n_iter`` iterations read ``x`` ``n_iter + 1`` times.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ..backends import Kernel, dispatch
from ..errors import InvalidArgument
from ..updates import all_finite
from ._common import (
    check_count,
    check_f,
    check_positive,
    check_updates,
    contiguous,
    raise_nonfinite,
    sq_dists64,
)
from .geometric_median import Step, step_native, step_triton


def centered_clipping_reference(
    x: torch.Tensor,
    *,
    f: int = 0,
    tau: float = 1.0,
    n_iter: int = 3,
    center: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-torch centered clipping of ``x`` ``[n, d]`` -> float32 ``[d]``.

    Computes in float32, norms in float64 (a float32 norm of a row at 1e19 overflows and
    would drop that row's bounded pull instead of clipping it). ``f`` is only validated by
    :func:`centered_clipping`.

    The norms' sum across columns is :func:`~._common.sq_dists64`'s: ``DIST_BLOCK``-column
    blocks at multiples of ``DIST_BLOCK``, added in block order. Everything else is
    column-local, so :mod:`bcfl_engine.distributed` (which adds the same blocks in the same
    order across ranks) gives these bits for any number of ranks.
    """
    xf = x.float()
    v = torch.zeros(x.shape[1], device=x.device) if center is None else center.float()
    for _ in range(n_iter):
        diff = xf - v
        norms = sq_dists64(diff).sqrt()
        scale = tau / norms.clamp(min=tau)  # min(1, tau / norm); 1 for a zero difference
        v = v + (diff * scale.float()[:, None]).mean(dim=0)
    return v


def clipped_iterations(
    x: torch.Tensor, tau: float, n_iter: int, center: torch.Tensor | None, step: Step
) -> torch.Tensor:
    """Centered clipping through the fused ``step`` (coefficients in float64)."""
    n = x.shape[0]
    zero = torch.zeros(n, dtype=torch.float32, device=x.device)
    v, d2 = step(x, zero, 1.0, center, True)  # v = center (or 0): only the distances
    for k in range(n_iter):
        c = (tau / d2.sqrt().clamp(min=tau)) / n
        v, d2 = step(x, c, float(1.0 - c.sum()), v, k + 1 < n_iter)
    return v


def _fast(step: Step) -> Callable[..., torch.Tensor]:
    def run(
        x: torch.Tensor,
        *,
        f: int = 0,
        tau: float = 1.0,
        n_iter: int = 3,
        center: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return clipped_iterations(contiguous(x), tau, n_iter, center, step)

    return run


KERNELS = (
    Kernel("torch", centered_clipping_reference),
    Kernel("native", _fast(step_native), needs="cpp"),
    Kernel("triton", _fast(step_triton)),
)


def centered_clipping(
    x: torch.Tensor,
    *,
    f: int = 0,
    tau: float = 1.0,
    n_iter: int = 3,
    center: torch.Tensor | None = None,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Centered clipping of ``x`` ``[n, d]`` around ``center`` -> float32 ``[d]``.

    Parameters
    ----------
    f : Byzantine clients tolerated; requires ``n > 2f``.
    tau : clipping radius, > 0: each ``x_i - v`` is shortened to norm at most ``tau``.
    n_iter : iterations, >= 1 (the paper uses 1 to 3).
    center : ``[d]`` starting point, e.g. the previous aggregate; zeros if None.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. Costs no pass of its own: a NaN in row ``i`` makes its
        distance to the center NaN, hence its coefficient and ``v``; an infinity makes its
        distance infinite, its coefficient 0 and ``0 * inf = nan`` in ``v``. So the result is
        non-finite, and only then are the rows scanned to name the culprit.

    Storage may be float32, float16 or bfloat16; all backends compute in float32 (the fast
    paths accumulate distances in float64).
    """
    rule = "centered_clipping"
    x = check_updates(x, rule)
    n, d = x.shape
    check_f(f, n, rule)
    tau = check_positive(tau, "tau", rule)
    n_iter = check_count(n_iter, "n_iter", rule)
    if center is not None:
        if not isinstance(center, torch.Tensor):
            try:
                center = torch.as_tensor(center, dtype=torch.float32)
            except (TypeError, ValueError, RuntimeError):
                raise InvalidArgument(
                    f"{rule}: center must be a [d={d}] tensor; got {type(center).__name__}"
                ) from None
        if center.shape != (d,):
            raise InvalidArgument(
                f"{rule}: center must be [d={d}]; got shape {tuple(center.shape)}"
            )
        center = center.to(device=x.device, dtype=torch.float32)
        if not bool(torch.isfinite(center).all()):
            raise InvalidArgument(f"{rule}: center holds NaN or infinity")
    out = dispatch(rule, KERNELS, x, backend, f=f, tau=tau, n_iter=n_iter, center=center)
    if check and not all_finite(out):
        raise_nonfinite(x, rule)
    return out
