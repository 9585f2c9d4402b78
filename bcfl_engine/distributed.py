"""One round aggregated by several processes over ``torch.distributed``.

Each rank holds a row shard: the updates of the clients it received, ``[n_r, d]``, with their
weights and client ids. :func:`aggregate` returns the same float32 ``[d]`` aggregate on every
rank. Global row order is rank order (rank 0's rows first), so the single-process reference is
``bcfl_engine.aggregate(torch.cat(all_row_shards), rule=..., backend=...)``.

What is guaranteed, per rule (same ``backend`` on both sides; the tests check every case):

- ``mean``, ``median``, ``trimmed_mean``: **bit-identical** to one process for any number of
  ranks. Row shards become column shards (:func:`.distributed_comm.to_columns`), the rule's
  own kernel runs on each column shard with the full weights, and the columns are gathered
  back. No kernel mixes columns: each output column is a function of its column alone, rows in
  the same order. The one cross-column decision of the engine, the mean's float64 recomputation
  when a float32 sum overflowed, is taken for all ranks at once, as one process takes it for
  all columns.
- ``krum``, ``multi_krum``, ``bulyan`` with the torch backend: **bit-identical**. The
  single-process reference defines its cross-column sum by blocks
  (:func:`.rules._distances.sq_dists_reference`: ``REFERENCE_BLOCK``-column blocks added in
  order); here each rank's shard is whole blocks of that grid, each block's partial is the
  reference's own, and the partials are added in block order across ranks
  (:func:`.distributed_comm.fold_in_rank_order`). Same distances, same selection, same rows.
- the same rules with the native or Triton backend: **bit-identical whenever the selection
  is**. Their distances come from a centred float32-block Gram (:mod:`.rules._distances`)
  whose block order inside the kernel is its own; here each rank computes the partial Gram of
  its shard (centred on the single-process pivot, gathered from the same column sample) and
  the partials are added in rank order. The distances then differ from one process's within
  the Gram's error (~1e-6 of the distances, documented there), so the selection (Krum order,
  ties to the lowest index) is one process's unless two scores at the selection boundary lie
  within that error of each other. Given the same rows, the output is the same bits: Krum
  copies a row; Multi-Krum and Bulyan's coordinate stage run the backend's own kernel on the
  column shard. All ranks always agree with each other: one matrix, summed in one order.
- CKKS sums: :func:`ckks_sum` (from :mod:`.distributed_ckks`), bit-identical to
  :func:`bcfl_engine.he.ckks_sum.ckks_sum` in one process: modular sums are exact.

- ``geometric_median``, ``centered_clipping``: **bit-identical** to one process's torch
  reference, which is the only step they run (:mod:`.distributed_iterative`); each step folds
  ``n`` distances across ranks (the geometric median also all-gathers its iterate).
- ``pre=`` (``clip``, ``nnm``, in any order before any rule): **bit-identical** to
  ``bcfl_engine.aggregate(x, rule, pre=pre, backend="torch")``; the steps run on the column
  shards (:mod:`.distributed_pre`) and the rule takes their output where it would take the
  updates. With ``pre=`` every step and the rule run the torch backend (``backend`` None or
  "torch"; another is refused).

Every rule of :data:`bcfl_engine.rules.RULES` runs here: the aggregates of :data:`RULES`, the
pre-steps of :data:`~.distributed_pre.PRE_STEPS`; ``dp=`` (the private mean) is refused with
:class:`~bcfl_engine.errors.DPUnsupported`.

Device: the group's backend decides (:func:`.distributed_comm.comm_device`): gloo runs on
CPU tensors, NCCL on the rank's current CUDA device (rows given on the CPU are copied there;
the result is returned there). The NCCL path has not been run on GPUs: only the device
selection is tested (on CPUs). The bit-identity statements above are for the CPU kernels; on
CUDA the same structure holds for the torch backend, untested.

A rank that dies, or does not answer within the process group's ``timeout``, makes every other
rank raise :class:`~bcfl_engine.errors.PeerFailure`; a bad input on any rank makes every rank
raise the same typed error (the checks run on metadata every rank has gathered), so no rank is
left waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from . import rules
from .backends import choose, dispatch
from .distributed_check import (
    COORDINATE_RULES,
    DISTANCE_RULES,
    ITERATIVE_RULES,
    RULES,
    check_round,
    local_meta,
    stand_in,
)
from .distributed_ckks import ckks_sum
from .distributed_comm import (
    SEND_BYTES,
    Layout,
    comm_device,
    gather_columns,
    gather_objects,
    to_columns,
)
from .distributed_distances import distance_rule
from .distributed_iterative import centered_clipping, geometric_median
from .distributed_pre import PRE_STEPS, apply_pre, check_pre
from .errors import InvalidArgument
from .rules._common import DIST_BLOCK
from .rules._distances import REFERENCE_BLOCK
from .updates import all_finite

__all__ = ["PRE_STEPS", "RULES", "aggregate", "ckks_sum"]

# Column ranges made of whole blocks of both block sums across columns (the distances'
# REFERENCE_BLOCK, the norms' DIST_BLOCK), so that every rank's blocks are the global grid's.
BLOCK_ALIGN = math.lcm(REFERENCE_BLOCK, DIST_BLOCK)


def aggregate(
    local_rows: torch.Tensor,
    *,
    rule: str = "mean",
    f: int = 0,
    weights: Any = None,
    client_ids: list[str] | None = None,
    group: Any = None,
    backend: str | None = None,
    send_bytes: int = SEND_BYTES,
    stats: dict[str, float] | None = None,
    pre: Sequence[Any] = (),
    **params: Any,
) -> torch.Tensor:
    """Aggregate the updates held by every rank of ``group``; each rank gets the result.

    Parameters
    ----------
    local_rows : this rank's ``[n_r, d]`` updates (float32, float16 or bfloat16; ``n_r`` may
        be 0), on the CPU or on the group's device. ``d`` and the dtype must agree across
        ranks.
    rule : one of :data:`RULES`.
    f : the number of Byzantine clients to tolerate, checked against the rule's precondition
        for the total ``n``.
    weights : ``[n_r]`` positive client weights (weighted rules), on every rank or on none.
    client_ids : ``n_r`` names, unique across ranks (used in error messages); optional.
    group : the process group (None: the default group, which must be initialised). Its
        backend chooses the device (:func:`.distributed_comm.comm_device`): gloo works on the
        CPU; NCCL on the rank's current CUDA device (``torch.cuda.set_device(local_rank)``
        first), where the rows are copied if they came on the CPU. The NCCL path is untested
        on GPUs (written for them; only its device selection is tested, on CPUs).
    backend : "torch", "native", "triton" or None; every rank must resolve the same one.
    send_bytes : the send buffer of one all-to-all round (memory per rank).
    stats : a dict to fill with this rank's seconds per phase (``check_s``, ``all_to_all_s``,
        ``pre_s``: the pre-steps, ``rule_s``: the rule on the shard, its own collectives
        included, ``gather_s``) and ``sent_bytes`` (what this rank sent in the all-to-all).
    pre : pre-aggregation steps, as :func:`bcfl_engine.aggregate` takes them: each a name
        ("nnm") or ``(name, params)`` (``("clip", {"max_norm": 1.0})``); the same on every
        rank. Runs the torch backend (see the module docstring).
    **params : rule parameters (``m`` for multi_krum; ``eps``, ``max_iter``, ``tol`` for
        geometric_median; ``tau``, ``n_iter``, ``center`` for centered_clipping), the same on
        every rank.

    Returns
    -------
    float32 ``[d]`` on the group's device, the same bits on every rank (see the module
    docstring for how they relate to one process's).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgument("distributed aggregate: torch.distributed is not initialised")
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        if stats is not None:
            stats[name] = clock[-1] - clock[-2]

    device = comm_device(group)  # from the group's backend: the same on every rank
    meta = local_meta(local_rows, rule, weights, client_ids, backend, pre, f, params, device)
    metas = gather_objects(meta, group, "exchange of shard metadata")
    layout, w, kernel = check_round(metas, rule, f, params, dist.get_rank(group))
    layout = dataclasses.replace(layout, device=device)
    # The kernel for the whole [n, d] on the group's device, as one process chooses it (a
    # kernel's limits are on n): the same on every rank (they agreed on their shards' choice).
    requested = "torch" if rule in ITERATIVE_RULES or pre else backend
    probe = stand_in(layout.n, layout.d, layout.dtype, device)
    kernel = choose(rule, rules.get(rule).kernels, probe, requested).backend
    steps = check_pre(pre, f, layout.n)
    if (rule in DISTANCE_RULES and kernel == "torch") or rule in ITERATIVE_RULES or steps:
        # Shards of whole blocks of the reference's sums across columns (distributed_distances,
        # distributed_iterative, distributed_pre): the same block grid as one process.
        layout = dataclasses.replace(layout, align=BLOCK_ALIGN)
    lap("check_s")
    x = local_rows.detach().to(device)  # no copy on gloo (CPU rows) or rows already there
    xc = to_columns(x, layout, group, send_bytes)
    lap("all_to_all_s")
    xc = apply_pre(xc, layout, steps, group, owned=xc.data_ptr() != x.data_ptr())
    lap("pre_s")
    if rule in ITERATIVE_RULES:
        # Already whole, on every rank.
        if rule == "geometric_median":
            result = geometric_median(xc, layout, w, params, group)
        else:
            result = centered_clipping(xc, layout, params, group)
        lap("rule_s")
    else:
        if rule in COORDINATE_RULES:
            out = _coordinate(xc, layout, rule, f, w, kernel, group)
        else:
            out = distance_rule(xc, layout, rule, f, params.get("m"), kernel, group)
        lap("rule_s")
        result = gather_columns(out, layout, group)
    lap("gather_s")
    if stats is not None and layout.world > 1:
        c0, c1 = layout.my_columns
        stats["sent_bytes"] = float(x.shape[0] * (layout.d - (c1 - c0)) * x.element_size())
    elif stats is not None:
        stats["sent_bytes"] = 0.0
    return result


# ---- coordinate-wise rules ------------------------------------------------------------------


def _coordinate(
    xc: torch.Tensor,
    layout: Layout,
    rule: str,
    f: int,
    w: torch.Tensor | None,
    kernel: str,
    group: Any,
) -> torch.Tensor:
    """The rule's own kernel on this rank's column shard ``[n, c_r]``: float32 ``[c_r]``."""
    if xc.shape[1] == 0:
        out = xc.new_empty(0, dtype=torch.float32)
    elif rule == "mean":
        # The kernel itself: rules.mean's own float64 fallback is decided below, for all ranks.
        out = dispatch("mean", rules.get("mean").kernels, xc, kernel, w)
    else:
        out = rules.get(rule).fn(xc, f=f, backend=kernel, check=False)
    if rule == "mean":
        # rules.mean recomputes every column in float64 when the float32 sum of any column
        # overflowed (finite input near 3.4e38): decide that for all ranks together.
        flags = gather_objects(bool(all_finite(out)), group, "exchange of overflow flags")
        if not all(flags):
            from .rules._common import normalized_weights

            w64 = normalized_weights(w, xc.shape[0]).to(xc.device)
            out = (w64[:, None] * xc.double()).sum(dim=0).float()
    return out


if __name__ == "__main__":
    from .distributed_main import main

    main()
