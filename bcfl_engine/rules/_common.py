"""Validation and small helpers shared by the rules (not part of the public API)."""

from __future__ import annotations

import ctypes
import math
import os
import sys

import torch

from ..errors import InvalidArgument, NonFiniteUpdate
from ..updates import STORAGE_DTYPES, all_finite

# Column block of the streaming rules: 64K floats keeps an [n=64, block] float32 tile in L2.
BLOCK = 1 << 16

# The smallest normal float32: a scale below it keeps fewer than 24 bits.
FLT_MIN = float(torch.finfo(torch.float32).tiny)
# A float32 sum of squares below this may have lost terms to underflow (squares of terms under
# 1.1e-19 are subnormal or 0): with d <= 1e9 terms the loss is below 1e9 * 1.2e-38 = 1.2e-29,
# 1e-9 of 1e-20. Such rows, and rows whose float32 sum overflowed (terms over ~1e19), are summed
# again in float64 (:func:`exact_sq_dists`). csrc/clip.cpp uses the same bound.
RECHECK_BELOW = 1e-20
# Columns per block of the float64 sums: [n, 16384] float64 temporaries.
DIST_BLOCK = 1 << 14


def sq_dists64(x: torch.Tensor, v: torch.Tensor | None = None) -> torch.Tensor:
    """``||x_i - v||^2`` (``||x_i||^2`` without ``v``) in float64 for the rows of ``x``
    ``[m, d]``: no overflow or underflow for any finite float32, float16 or bfloat16 input (the
    square of any finite float32 fits a float64)."""
    out = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
    for j0 in range(0, x.shape[1], DIST_BLOCK):
        diff = x[:, j0 : j0 + DIST_BLOCK].double()
        if v is not None:
            diff = diff - v[j0 : j0 + DIST_BLOCK].double()
        out += diff.square().sum(dim=1)
    return out


def row_sq_norms64(x: torch.Tensor) -> torch.Tensor:
    """``||x_i||^2`` in float64, as :func:`sq_dists64`."""
    return sq_dists64(x)


def exact_sq_dists(x: torch.Tensor, v: torch.Tensor | None, d2: torch.Tensor) -> torch.Tensor:
    """``d2`` (``||x_i - v||^2`` from float32 sums) with the rows a float32 sum may have got
    wrong (non-finite, or below :data:`RECHECK_BELOW`) summed again in float64. With a
    non-finite ``v`` (from non-finite input) ``d2`` is returned as it is: the caller reports."""
    bad = ~torch.isfinite(d2) | (d2 < RECHECK_BELOW)
    if not bool(bad.any()) or (v is not None and not bool(torch.isfinite(v).all())):
        return d2
    rows = bad.nonzero().reshape(-1)
    d2 = d2.clone()
    d2[rows] = sq_dists64(x[rows], v)
    return d2


def exact_sq_norms(x: torch.Tensor, sq: torch.Tensor) -> torch.Tensor:
    """:func:`exact_sq_dists` for row norms."""
    return exact_sq_dists(x, None, sq)


def _byte_writable(addr: int) -> bool:
    """Whether the byte at ``addr`` may be written, asked of the kernel rather than by writing
    it (a SIGSEGV on a read-only page): it goes into a pipe and is read back into place, which
    fails with EFAULT where the page is not writable. The value is unchanged. (The native
    bindings check their outputs the same way, csrc/bindings.cpp and bindings_util.h.)"""
    r, w = os.pipe()
    try:
        cell = (ctypes.c_char * 1).from_address(addr)
        try:
            os.write(w, bytes(cell))  # reads the byte: a fault here is an unreadable page
        except OSError:
            return False
        try:
            return os.readv(r, [memoryview(cell).cast("B")]) == 1
        except OSError:
            return False
    finally:
        os.close(r)
        os.close(w)


def check_writable(x: torch.Tensor, rule: str) -> None:
    """``x`` may be written in place: InvalidArgument if its memory is mapped read-only (an
    ``np.memmap`` opened ``mode='r'``, a read-only ``mmap``), which a write would turn into a
    SIGSEGV. (A numpy array flagged ``writeable=False`` but stored in writable memory cannot be
    told apart once ``torch.from_numpy`` has wrapped it; torch warns at that call.)"""
    if x.device.type != "cpu" or x.numel() == 0 or sys.platform != "linux":
        return
    start = x.data_ptr()
    last = start + x.numel() * x.element_size() - 1
    # A read-only mapping (np.memmap mode='r') covers a whole buffer: its ends tell.
    if not (_byte_writable(start) and _byte_writable(last)):
        raise InvalidArgument(
            f"{rule}: cannot write in place into read-only memory (a memory map opened "
            "mode='r'?); pass a writable copy, or inplace=False"
        )


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
