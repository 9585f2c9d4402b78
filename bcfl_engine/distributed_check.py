"""The boundary of :func:`bcfl_engine.distributed.aggregate`: what each rank knows of its
shard and call, and the checks every rank runs on the metadata all ranks gathered (so every
rank raises the same typed error and none is left waiting in a collective).
"""

from __future__ import annotations

import hashlib
from collections import Counter
from typing import Any

import torch

from . import rules
from .backends import choose
from .distributed_comm import Layout
from .distributed_iterative import check_params
from .errors import (
    BackendUnavailable,
    DPUnsupported,
    DuplicateClient,
    InvalidArgument,
    NonFiniteUpdate,
)
from .updates import STORAGE_DTYPES, all_finite

COORDINATE_RULES = ("mean", "median", "trimmed_mean")
DISTANCE_RULES = ("krum", "multi_krum", "bulyan")
ITERATIVE_RULES = ("geometric_median", "centered_clipping")
RULES = COORDINATE_RULES + DISTANCE_RULES + ITERATIVE_RULES


def local_meta(
    x: Any,
    rule: str,
    weights: Any,
    client_ids: Any,
    backend: str | None,
    pre: Any,
    f: Any,
    params: dict[str, Any],
    device: torch.device,
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
        if x.dtype not in STORAGE_DTYPES or x.device not in (torch.device("cpu"), device):
            raise InvalidArgument(
                f"local rows must be a tensor of {STORAGE_DTYPES} on the CPU or {device} (the "
                f"group's device); got {x.dtype} on {x.device}"
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
        probe = stand_in(max(n_r, 1), max(d, 1), x.dtype, device)
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


def stand_in(n: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """A stand-in ``[n, d]`` for choosing a kernel (device, dtype and shape; no memory)."""
    return torch.zeros((), dtype=dtype, device=device).expand(n, d)


def _shape(x: Any) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def check_round(
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
