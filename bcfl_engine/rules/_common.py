"""Validation and small helpers shared by the rules (not part of the public API)."""

from __future__ import annotations

import math

import torch

from ..errors import InvalidArgument, NonFiniteUpdate
from ..updates import STORAGE_DTYPES, all_finite

# Codes of the storage dtypes in the native kernels (csrc/common.h).
DTYPE_CODE = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}

# Column block of the streaming rules: 64K floats keeps an [n=64, block] float32 tile in L2.
BLOCK = 1 << 16


def check_updates(x: object, rule: str, *, min_n: int = 1) -> torch.Tensor:
    """``x`` must be a 2-D ``[n, d]`` float tensor of a storage dtype with ``n >= min_n``."""
    if not isinstance(x, torch.Tensor):
        raise InvalidArgument(
            f"{rule}: updates must be a torch.Tensor [n, d]; got {type(x).__name__}"
        )
    if x.dim() != 2:
        raise InvalidArgument(f"{rule}: updates must be 2-D [n, d]; got shape {tuple(x.shape)}")
    if x.dtype not in STORAGE_DTYPES:
        raise InvalidArgument(f"{rule}: dtype must be one of {STORAGE_DTYPES}; got {x.dtype}")
    n, d = x.shape
    if n < min_n or d == 0:
        raise InvalidArgument(f"{rule}: needs at least {min_n} updates of d >= 1; got [{n}, {d}]")
    return x


def check_finite(x: torch.Tensor, rule: str) -> None:
    """Reject NaN/inf: one non-finite value poisons an aggregate."""
    if not all_finite(x):
        raise_nonfinite(x, rule)


def raise_nonfinite(x: torch.Tensor, rule: str, rows: torch.Tensor | None = None) -> None:
    """Raise NonFiniteUpdate naming the first row of ``x`` (among ``rows``, int64 indices, if
    given) that holds NaN or infinity; return if there is none (a finite input whose result
    overflowed, which the caller then handles)."""
    if rows is None:
        bad = (~torch.isfinite(x)).any(dim=1).nonzero()
        if bad.numel():
            raise NonFiniteUpdate(f"{rule}: update {int(bad[0, 0])} holds NaN or infinity")
        return
    for i in sorted(int(r) for r in rows.reshape(-1).tolist()):
        if not bool(torch.isfinite(x[i]).all()):
            raise NonFiniteUpdate(f"{rule}: update {i} holds NaN or infinity")


def check_f(f: object, n: int, rule: str) -> int:
    """``f`` must be an int >= 0 that ``n`` updates tolerate under ``rule``'s precondition
    (:class:`~bcfl_engine.rules.Precondition`, the registry's)."""
    from . import RULES

    return RULES[rule].check_precondition(n, f)


def check_rule_input(x: object, f: object, rule: str, check: bool) -> tuple[torch.Tensor, int]:
    """The boundary of a rule that tolerates ``f`` Byzantine updates: ``x`` as in
    :func:`check_updates`, ``f`` as in :func:`check_f`, and with ``check`` no NaN/inf
    (:func:`check_finite`)."""
    x = check_updates(x, rule)
    f = check_f(f, x.shape[0], rule)
    if check:
        check_finite(x, rule)
    return x, f


def check_weights(weights: object, n: int, rule: str) -> torch.Tensor | None:
    """None, or ``[n]`` positive finite weights (returned as float64)."""
    if weights is None:
        return None
    w = torch.as_tensor(weights, dtype=torch.float64).detach().cpu()
    if w.dim() != 1 or w.numel() != n:
        raise InvalidArgument(f"{rule}: weights must be [n={n}]; got shape {tuple(w.shape)}")
    if not bool(torch.isfinite(w).all()) or bool((w <= 0).any()):
        raise InvalidArgument(f"{rule}: weights must be positive and finite; got {w.tolist()[:8]}")
    return w


def normalized_weights(weights: torch.Tensor | None, n: int) -> torch.Tensor:
    """``[n]`` float64 weights summing to 1 (uniform if None), on the CPU."""
    w = torch.ones(n, dtype=torch.float64) if weights is None else weights.to(torch.float64)
    return w / w.sum()


def contiguous(x: torch.Tensor) -> torch.Tensor:
    """Kernels index rows with stride d: give them a contiguous buffer (no copy if it is)."""
    return x if x.is_contiguous() else x.contiguous()


def check_positive(value: object, name: str, rule: str, *, allow_zero: bool = False) -> float:
    """``value`` must be a finite real > 0 (>= 0 with ``allow_zero``); returned as float."""
    bound = ">= 0" if allow_zero else "> 0"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise InvalidArgument(f"{rule}: {name} must be a real number {bound}; got {value!r}")
    v = float(value)
    if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        raise InvalidArgument(f"{rule}: {name} must be a finite number {bound}; got {value!r}")
    return v


def check_count(value: object, name: str, rule: str) -> int:
    """``value`` must be an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidArgument(f"{rule}: {name} must be an int >= 1; got {value!r}")
    return value
