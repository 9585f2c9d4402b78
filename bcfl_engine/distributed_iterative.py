"""The geometric median (smoothed Weiszfeld, RFA) of :mod:`bcfl_engine.distributed`.

Bit-identical to one process's torch reference
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
number of steps. The native and Triton fused steps sum distances inside their kernels in an
order of their own: they are not run here.
"""

from __future__ import annotations

from typing import Any

import torch

from .distributed_comm import Layout, fold_in_rank_order, gather_columns
from .errors import InvalidArgument

DEFAULTS = {"eps": 1e-6, "max_iter": 100, "tol": 1e-6}


def check_params(params: dict[str, Any]) -> dict[str, Any]:
    """``eps``, ``max_iter``, ``tol`` as :func:`bcfl_engine.rules.geometric_median` checks them."""
    from .rules._common import check_count, check_positive

    rule = "geometric_median"
    unknown = sorted(set(params) - set(DEFAULTS))
    if unknown:
        raise InvalidArgument(f"{rule}: unexpected parameters {unknown}")
    p = {**DEFAULTS, **params}
    return {
        "eps": check_positive(p["eps"], "eps", rule),
        "max_iter": check_count(p["max_iter"], "max_iter", rule),
        "tol": check_positive(p["tol"], "tol", rule, allow_zero=True),
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
        return v, fold_in_rank_order(torch.zeros(n, dtype=torch.float64), parts, group)

    wn = normalized_weights(w, n)
    return weiszfeld(xc, wn, params["eps"], params["max_iter"], params["tol"], step)[0]
