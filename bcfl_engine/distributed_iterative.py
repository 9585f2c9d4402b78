"""The iterative rules of :mod:`bcfl_engine.distributed`: the geometric median (smoothed
Weiszfeld, RFA) and centered clipping.

Geometric median. Bit-identical to one process's torch reference
(:func:`bcfl_engine.rules.geometric_median.geometric_median_reference`), for any number of
ranks: it runs the same :func:`~bcfl_engine.rules.geometric_median.weiszfeld` loop with a step
that splits the reference's own step by columns.

- the combination ``v = sum_i c_i x_i`` is column-local: each rank forms its columns (torch's
  reduction over rows, on shards of whole ``DIST_BLOCK`` blocks, gives the whole matrix's bits;
  see :data:`.distributed_comm.COLUMN_ALIGN`), then one all-gather of ``v`` (``4 d`` bytes a
  rank), since the stopping test measures ``||v - v_prev||`` over all of ``d``;
- the squared distances ``||x_i - v||^2`` are the reference's float64 sums by ``DIST_BLOCK``
  blocks (:func:`~bcfl_engine.rules._common.sq_dists64`) added in block order: each rank forms
  its blocks' partials and they are folded in rank order (``n`` float64 a message).

Every rank then takes the same weights and the same stopping decision, so all run the same
number of steps.

Centered clipping. Bit-identical to one process's torch reference
(:func:`bcfl_engine.rules.centered_clipping.centered_clipping_reference`), for any number of
ranks. The center ``v`` is column-local: each rank keeps its columns of ``v`` through every
iteration and they are gathered once, at the end. Per iteration the one sum across columns,
``||x_i - v||^2``, is the reference's :func:`~bcfl_engine.rules._common.sq_dists64` block sums
(float64, ``DIST_BLOCK`` blocks), formed on each rank's whole blocks and folded in block order
across ranks (``n`` float64 a message); every rank then takes the same clipping scales, and
``v + mean_i (x_i - v) s_i`` is column-local (torch's reduction over rows, on shards of whole
blocks, as above).

The native and Triton fused steps sum distances inside their kernels in an order of their own:
they are not run here.
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed_comm import Layout, fold_in_rank_order, gather_columns
from .errors import InvalidArgument

DEFAULTS: dict[str, dict[str, Any]] = {
    "geometric_median": {"eps": 1e-6, "max_iter": 100, "tol": 1e-6},
    "centered_clipping": {"tau": 1.0, "n_iter": 3, "center": None},
}


def check_params(rule: str, params: dict[str, Any], d: int) -> dict[str, Any]:
    """The rule's parameters with their defaults, checked as
    :func:`bcfl_engine.rules.geometric_median` / :func:`bcfl_engine.rules.centered_clipping`
    check them (``center``: a finite ``[d]``, returned as a float32 CPU tensor)."""
    from .rules._common import check_count, check_positive

    unknown = sorted(set(params) - set(DEFAULTS[rule]))
    if unknown:
        raise InvalidArgument(f"{rule}: unexpected parameters {unknown}")
    p = {**DEFAULTS[rule], **params}
    if rule == "geometric_median":
        return {
            "eps": check_positive(p["eps"], "eps", rule),
            "max_iter": check_count(p["max_iter"], "max_iter", rule),
            "tol": check_positive(p["tol"], "tol", rule, allow_zero=True),
        }
    center = p["center"]
    if center is not None:
        try:
            center = torch.as_tensor(center).detach().to("cpu", torch.float32)
        except (TypeError, ValueError, RuntimeError):
            raise InvalidArgument(
                f"{rule}: center must be a [d={d}] tensor; got {type(p['center']).__name__}"
            ) from None
        if center.shape != (d,):
            raise InvalidArgument(f"{rule}: center must be [d={d}]; got {tuple(center.shape)}")
        if not bool(torch.isfinite(center).all()):
            raise InvalidArgument(f"{rule}: center holds NaN or infinity")
    return {
        "tau": check_positive(p["tau"], "tau", rule),
        "n_iter": check_count(p["n_iter"], "n_iter", rule),
        "center": center,
    }


def geometric_median(
    xc: torch.Tensor, layout: Layout, w: torch.Tensor | None, params: dict[str, Any], group: Any
) -> torch.Tensor:
    """The whole float32 ``[d]`` geometric median, on every rank, from column shards ``xc``."""
    from .rules._common import DIST_BLOCK, normalized_weights
    from .rules.geometric_median import weiszfeld

    n = layout.n
    c0, c1 = layout.my_columns

    def step(
        x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        # rules.geometric_median.step_torch, by columns.
        mine = (coef.float()[:, None] * x.float()).sum(dim=0)
        if v_in is not None:
            mine = mine + beta * v_in[c0:c1].float()
        v = gather_columns(mine, layout, group)
        if not with_dist:
            return v, v.new_empty(0, dtype=torch.float64)
        parts = [
            (x[:, j0 : j0 + DIST_BLOCK].double() - v[c0 + j0 : c0 + j0 + DIST_BLOCK].double())
            .square()
            .sum(dim=1)
            for j0 in range(0, x.shape[1], DIST_BLOCK)
        ]
        zero = torch.zeros(n, dtype=torch.float64, device=x.device)
        return v, fold_in_rank_order(zero, parts, group)

    wn = normalized_weights(w, n).to(xc.device)  # as the reference's .to(x.device)
    return weiszfeld(xc, wn, params["eps"], params["max_iter"], params["tol"], step)[0]


def centered_clipping(
    xc: torch.Tensor, layout: Layout, params: dict[str, Any], group: Any
) -> torch.Tensor:
    """The whole float32 ``[d]`` centered clipping, on every rank, from column shards ``xc``
    (the reference's loop, by columns; see the module docstring)."""
    from .distributed_pre import sq_norms_by_blocks

    c0, c1 = layout.my_columns
    tau, center = params["tau"], params["center"]
    xf = xc.float()
    if center is None:
        v = torch.zeros(c1 - c0, device=xc.device)
    else:
        v = center[c0:c1].to(xc.device, torch.float32)
    for _ in range(params["n_iter"]):
        diff = xf - v
        norms = sq_norms_by_blocks(diff, layout.n, group).sqrt()
        scale = tau / norms.clamp(min=tau)  # min(1, tau / norm), as the reference
        v = v + (diff * scale.float()[:, None]).mean(dim=0)
    return gather_columns(v, layout, group)
