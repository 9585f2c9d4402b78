"""Pre-aggregation steps of :mod:`bcfl_engine.distributed` (``pre=``) on column shards.

A pre-step maps the round's ``[n, d]`` matrix to another ``[n, d]``; here it maps this rank's
column shard ``[n, c_r]`` to the same columns of the result, so the rule after it runs on the
shard as it would on any other. Both steps are **bit-identical** to the single-process
engine's torch backend (``bcfl_engine.aggregate(x, rule, pre=..., backend="torch")``) for any
number of ranks: their only sums across columns are the reference's block sums, which the
ranks form on whole blocks of the same grid and fold in block order
(:func:`~.distributed_comm.fold_in_rank_order`); the rest is column-local.

- ``clip`` (:func:`bcfl_engine.rules.clip`): the row norms are
  :func:`~.rules._common.sq_dists64`'s ``DIST_BLOCK`` block sums of the float32 rows, folded
  across ranks (``n`` float64 a message); each rank then scales its columns by the same
  float64 scales with the same code (:func:`~.rules.clip._scale_rows`).
- ``nnm`` (:func:`bcfl_engine.rules.nnm`): the distances are
  :func:`~.rules._distances.sq_dists_reference`'s (``REFERENCE_BLOCK`` blocks of
  :func:`~.rules._distances.reference_block`, folded); every rank takes the same neighbours
  (:func:`~.rules._distances.nearest`) and mixes its columns as the reference does, a float64
  mean over the neighbours' rows of each column.

Only the torch reference runs here (the native and Triton paths sum across columns inside
their kernels); :mod:`bcfl_engine.distributed` refuses another backend with ``pre=``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from . import rules
from .distributed_comm import Layout, fold_in_rank_order
from .errors import InvalidArgument

PRE_STEPS = ("clip", "nnm")
Step = tuple[str, dict[str, Any]]


def check_pre(pre: Any, f: int, n: int) -> list[Step]:
    """``pre`` as ``[(name, params)]`` with every parameter checked as the single-process step
    checks it (``nnm`` takes the call's ``f`` unless its own is given); InvalidArgument or
    PreconditionError otherwise."""
    from .rules._common import check_positive

    if isinstance(pre, (str, bytes)) or not isinstance(pre, Sequence):
        raise InvalidArgument(
            f"pre must be a list of steps, each a name or (name, params); got {pre!r}"
        )
    steps: list[Step] = []
    for step in pre:
        if isinstance(step, str):
            name, kw = step, {}
        elif isinstance(step, tuple) and len(step) == 2 and isinstance(step[1], Mapping):
            name, kw = step[0], dict(step[1])
        else:
            raise InvalidArgument(f"a pre-step is a name or (name, params); got {step!r}")
        info = rules.get(name)
        if info.kind != "pre":
            raise InvalidArgument(f"{name!r} is not a pre-aggregation step")
        allowed = {"clip": {"max_norm", "inplace"}, "nnm": {"f"}}.get(name)
        if allowed is None:
            raise InvalidArgument(
                f"distributed aggregate: pre-step {name!r} not supported; has {PRE_STEPS}"
            )
        unknown = sorted(set(kw) - allowed)
        if unknown:
            raise InvalidArgument(f"{name}: unexpected parameters {unknown}")
        if name == "clip":
            if "max_norm" not in kw:
                raise InvalidArgument("clip: max_norm is required")
            # inplace only saves memory in one process; here the column shard is always the
            # rank's own buffer and the caller's rows are never written.
            steps.append((name, {"max_norm": check_positive(kw["max_norm"], "max_norm", name)}))
        else:
            steps.append((name, {"f": info.check_precondition(n, kw.get("f", f))}))
    return steps


def apply_pre(
    xc: torch.Tensor, layout: Layout, steps: list[Step], group: Any, owned: bool
) -> torch.Tensor:
    """``steps`` in order on this rank's column shard ``xc`` ``[n, c_r]``: float32
    ``[n, c_r]`` (``xc`` itself when there is no step). ``owned``: ``xc`` may be written."""
    for name, kw in steps:
        if name == "clip":
            xc = clip_columns(xc, layout.n, kw["max_norm"], group, owned)
        else:
            xc = nnm_columns(xc, layout.n, kw["f"], group)
        owned = True
    return xc


def sq_norms_by_blocks(y: torch.Tensor, n: int, group: Any) -> torch.Tensor:
    """``||y_i||^2`` of the whole rows, float64 ``[n]``, the bits of
    :func:`~.rules._common.sq_dists64` on the whole matrix: this rank's ``DIST_BLOCK``
    blocks (its shard is whole blocks of the global grid) folded in block order across
    ranks."""
    from .rules._common import DIST_BLOCK

    parts = [
        y[:, j0 : j0 + DIST_BLOCK].double().square().sum(dim=1)
        for j0 in range(0, y.shape[1], DIST_BLOCK)
    ]
    return fold_in_rank_order(torch.zeros(n, dtype=torch.float64, device=y.device), parts, group)


def clip_columns(
    xc: torch.Tensor, n: int, max_norm: float, group: Any, owned: bool
) -> torch.Tensor:
    """:func:`bcfl_engine.rules.clip`'s torch path on a column shard: float32 ``[n, c_r]``."""
    from .rules.clip import _scale_rows, _scales

    xf = xc.float()
    mine = owned or xf.data_ptr() != xc.data_ptr()  # a conversion made a copy of our own
    norms = sq_norms_by_blocks(xf, n, group).sqrt()
    return _scale_rows(xf, _scales(norms, max_norm), inplace=mine)


def nnm_columns(xc: torch.Tensor, n: int, f: int, group: Any) -> torch.Tensor:
    """:func:`bcfl_engine.rules.nnm.nnm_reference` on a column shard: float32 ``[n, c_r]``."""
    from .distributed_distances import _torch_distances
    from .rules._distances import nearest

    nbr = nearest(_torch_distances(xc, n, group), n - f)
    if xc.shape[1] == 0:
        return xc.new_empty(n, 0, dtype=torch.float32)
    return torch.stack([xc[row].double().mean(dim=0) for row in nbr]).float()
