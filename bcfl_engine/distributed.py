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

A rank that dies, or does not answer within the process group's ``timeout``, makes every other
rank raise :class:`~bcfl_engine.errors.PeerFailure`; a bad input on any rank makes every rank
raise the same typed error (the checks run on metadata every rank has gathered), so no rank is
left waiting in a collective.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from . import rules
from .backends import choose, dispatch
from .distributed_ckks import ckks_sum
from .distributed_comm import (
    SEND_BYTES,
    Layout,
    gather_columns,
    gather_objects,
    to_columns,
)
from .distributed_distances import distance_rule
from .distributed_iterative import centered_clipping, check_params, geometric_median
from .distributed_pre import PRE_STEPS, apply_pre, check_pre
from .errors import (
    BackendUnavailable,
    DPUnsupported,
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
)
from .rules._common import DIST_BLOCK
from .rules._distances import REFERENCE_BLOCK
from .updates import STORAGE_DTYPES, all_finite

__all__ = ["PRE_STEPS", "RULES", "aggregate", "ckks_sum"]

COORDINATE_RULES = ("mean", "median", "trimmed_mean")
DISTANCE_RULES = ("krum", "multi_krum", "bulyan")
ITERATIVE_RULES = ("geometric_median", "centered_clipping")
RULES = COORDINATE_RULES + DISTANCE_RULES + ITERATIVE_RULES
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
    local_rows : this rank's ``[n_r, d]`` CPU updates (float32, float16 or bfloat16; ``n_r`` may
        be 0). ``d`` and the dtype must agree across ranks.
    rule : one of :data:`RULES`.
    f : the number of Byzantine clients to tolerate, checked against the rule's precondition
        for the total ``n``.
    weights : ``[n_r]`` positive client weights (weighted rules), on every rank or on none.
    client_ids : ``n_r`` names, unique across ranks (used in error messages); optional.
    group : the process group (None: the default group, which must be initialised).
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
    float32 ``[d]``, the same bits on every rank (see the module docstring for how they relate
    to one process's).
    """
    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgument("distributed aggregate: torch.distributed is not initialised")
    clock = [time.perf_counter()]

    def lap(name: str) -> None:
        clock.append(time.perf_counter())
        if stats is not None:
            stats[name] = clock[-1] - clock[-2]

    meta = _local_meta(local_rows, rule, weights, client_ids, backend, pre, f, params)
    metas = gather_objects(meta, group, "exchange of shard metadata")
    layout, w, kernel = _check_round(metas, rule, f, params, dist.get_rank(group))
    steps = check_pre(pre, f, layout.n)
    if (rule in DISTANCE_RULES and kernel == "torch") or rule in ITERATIVE_RULES or steps:
        # Shards of whole blocks of the reference's sums across columns (distributed_distances,
        # distributed_iterative, distributed_pre): the same block grid as one process.
        layout = dataclasses.replace(layout, align=BLOCK_ALIGN)
    lap("check_s")
    x = local_rows.detach()
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


# ---- boundary -------------------------------------------------------------------------------


def _local_meta(
    x: Any,
    rule: str,
    weights: Any,
    client_ids: Any,
    backend: str | None,
    pre: Any,
    f: Any,
    params: dict[str, Any],
) -> dict[str, Any]:
    """What every rank must know of this rank's shard and call, or the reason it is unusable."""
    meta: dict[str, Any] = {"problem": None, "call": _call_digest(rule, f, pre, params)}
    try:
        info = rules.get(rule)
        if info.kind == "pre":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step; pass it as pre=[{rule!r}]")
        if rule not in RULES:
            raise InvalidArgument(
                f"distributed aggregate: rule {rule!r} not supported; has {RULES}"
            )
        if "dp" in params:
            raise DPUnsupported(
                "distributed aggregate: dp= (the private mean) is not supported; the private "
                "mean runs in one process (bcfl_engine.aggregate)"
            )
        if not isinstance(x, torch.Tensor) or x.dim() != 2:
            raise InvalidArgument(f"local rows must be a 2-D [n_r, d] tensor; got {_shape(x)}")
        if x.dtype not in STORAGE_DTYPES or x.device.type != "cpu":
            raise InvalidArgument(
                f"local rows must be a CPU tensor of {STORAGE_DTYPES}; got {x.dtype} on {x.device}"
            )
        n_r, d = x.shape
        w = None
        if weights is not None:
            w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu().reshape(-1)
            if w.numel() != n_r or not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
                raise InvalidArgument(f"weights must be [n_r={n_r}] positive finite numbers")
        if client_ids is not None and len(client_ids) != n_r:
            raise InvalidArgument(f"client_ids must have n_r={n_r} names; got {len(client_ids)}")
        bad = -1
        if n_r and not all_finite(x):
            bad = int((~torch.isfinite(x)).any(dim=1).nonzero()[0, 0])
        probe = x if n_r and d else torch.zeros(max(n_r, 1), max(d, 1), dtype=x.dtype)
        if rule in ITERATIVE_RULES or pre:
            if backend not in (None, "torch"):
                what = f"distributed {rule}" if rule in ITERATIVE_RULES else "with pre=, it"
                raise InvalidArgument(
                    f"{what} runs the torch reference's step only; got backend={backend!r}"
                )
            backend = "torch"
        meta.update(
            n=n_r,
            d=d,
            dtype=str(x.dtype),
            weights=None if w is None else w.tolist(),
            ids=None if client_ids is None else [str(c) for c in client_ids],
            bad=bad,
            kernel=choose(rule, info.kernels, probe, backend).backend,
        )
    except (InvalidArgument, BackendUnavailable) as exc:
        meta["problem"] = str(exc)
        meta["error"] = type(exc).__name__
    return meta


def _call_digest(rule: Any, f: Any, pre: Any, params: dict[str, Any]) -> str:
    """A digest of the call's arguments (tensors by their bytes), which every rank must share."""
    h = hashlib.sha256()
    for part in (rule, f, pre, sorted(params.items(), key=lambda kv: kv[0])):
        h.update(_canonical(part).encode())
    return h.hexdigest()


def _canonical(v: Any) -> str:
    if isinstance(v, torch.Tensor):
        t = v.detach().cpu().contiguous()
        raw = t.reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"tensor({t.dtype},{tuple(t.shape)},{hashlib.sha256(raw).hexdigest()})"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(_canonical(e) for e in v) + "]"
    if isinstance(v, dict):
        return "{" + ",".join(f"{k!r}:{_canonical(e)}" for k, e in sorted(v.items())) + "}"
    return repr(v)


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check_round(
    metas: list[dict[str, Any]], rule: str, f: int, params: dict[str, Any], rank: int
) -> tuple[Layout, torch.Tensor | None, str]:
    """The layout, the global weights and the kernel, after the checks every rank runs
    on the same gathered metadata (so every rank raises the same error)."""
    errors = {e.__name__: e for e in (BackendUnavailable, DPUnsupported, InvalidArgument)}
    for r, m in enumerate(metas):
        if m["problem"]:
            raise errors[m["error"]](f"distributed aggregate: rank {r}: {m['problem']}")
    calls = [m["call"] for m in metas]
    if len(set(calls)) != 1:
        differ = [r for r, c in enumerate(calls) if c != calls[0]]
        raise InvalidArgument(
            f"distributed aggregate: ranks {differ} were called with other arguments (f, pre "
            "or rule parameters) than rank 0"
        )
    info = rules.get(rule)
    ds = {m["d"] for m in metas}
    dtypes = {m["dtype"] for m in metas}
    if len(ds) != 1 or len(dtypes) != 1:
        raise InvalidArgument(
            f"distributed aggregate: ranks disagree on d or dtype: "
            f"{[(m['d'], m['dtype']) for m in metas]}"
        )
    kernels = {m["kernel"] for m in metas}
    if len(kernels) != 1:
        raise BackendUnavailable(
            f"{rule}: ranks would run different backends {[m['kernel'] for m in metas]}; "
            "pass backend= explicitly"
        )
    counts = tuple(int(m["n"]) for m in metas)
    n, d = sum(counts), ds.pop()
    if n == 0 or d == 0:
        raise InvalidArgument(f"{rule}: needs at least 1 update of d >= 1; got [{n}, {d}]")
    given = [m["weights"] is not None for m in metas if m["n"]]
    if any(given) and not all(given):
        raise InvalidArgument("distributed aggregate: weights given on some ranks, not all")
    if any(given) and not info.weighted:
        raise InvalidArgument(f"rule {rule!r} does not take client weights")
    if not info.takes_f and f:
        raise InvalidArgument(f"rule {rule!r} does not take f")
    f = info.check_precondition(n, f)
    w = torch.tensor([v for m in metas for v in (m["weights"] or [])], dtype=torch.float64)
    has_ids = [m["ids"] is not None for m in metas if m["n"]]
    ids = [c for m in metas for c in (m["ids"] or [])] if all(has_ids) else None
    if ids is not None and len(set(ids)) != len(ids):
        dup = next(c for c, k in Counter(ids).items() if k > 1)
        raise DuplicateClient(f"distributed aggregate: client {dup!r} is on two ranks")
    dtype = getattr(torch, dtypes.pop().removeprefix("torch."))
    layout = Layout(counts, d, dtype, rank)
    for r, m in enumerate(metas):
        if m["bad"] >= 0:
            row = layout.offsets[r] + m["bad"]
            who = f" (client {ids[row]!r})" if ids is not None else ""
            raise NonFiniteUpdate(f"{rule}: update {row}{who} on rank {r} holds NaN or infinity")
    if rule == "multi_krum":
        m_ = params.get("m", n - f)
        if m_ is None:
            m_ = n - f
        if not isinstance(m_, int) or isinstance(m_, bool) or not 1 <= m_ <= n:
            raise InvalidArgument(f"multi_krum: m must be an int in [1, n={n}]; got {m_!r}")
        params["m"] = m_
    elif rule in ITERATIVE_RULES:
        params.update(check_params(rule, params, d))
    elif params:
        raise InvalidArgument(f"{rule}: unexpected parameters {sorted(params)}")
    return layout, (w if any(given) else None), kernels.pop()


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
        out = torch.empty(0, dtype=torch.float32)
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

            w64 = normalized_weights(w, xc.shape[0])
            out = (w64[:, None] * xc.double()).sum(dim=0).float()
    return out


if __name__ == "__main__":
    from .distributed_main import main

    main()
