"""Triton kernels of lean CKKS payloads (``bcfl_engine/he/lean.py`` states the maps).

The switch ``round(2^b c / q_0)``: a float64 estimate (within 1 of the quotient for ``b <= 50``)
and one exact correction from the remainder ``c 2^b - est q_0`` in wrapping 64-bit arithmetic
(its true value is below ``1.5 q_0 < 2^61`` in magnitude), as in ``csrc/lean.cpp``: no 128-bit
division, which a GPU lacks. A block never straddles two rows (BLOCK divides N), so each program
knows whether it holds ``c_0`` (rounded by ``K`` more bits, ties to even) or ``c_1``. The sum
wraps modulo ``2^64`` and is masked once. Scalars that do not fit 32 bits (``q_0``, the masks,
the float64 ratio) come in through small tensors: Triton passes Python floats as float32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _lean_switch_kernel(
    x_ptr,
    out_ptr,
    consts_ptr,
    ratio_ptr,
    N,
    B: tl.constexpr,
    K: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    cols = start + tl.arange(0, BLOCK)
    q = tl.load(consts_ptr).to(tl.uint64, bitcast=True)
    mask = tl.load(consts_ptr + 1).to(tl.uint64, bitcast=True)
    tmask = tl.load(consts_ptr + 2).to(tl.uint64, bitcast=True)
    ratio = tl.load(ratio_ptr)
    c = tl.load(x_ptr + cols).to(tl.uint64, bitcast=True)
    est = (c.to(tl.float64) * ratio + 0.5).to(tl.uint64)
    r = ((c << B) - est * q).to(tl.int64, bitcast=True)
    qs = q.to(tl.int64, bitcast=True)
    est = tl.where(2 * r > qs, est + 1, tl.where(2 * r < -qs, est - 1, est))
    y = est & mask
    if K > 0:  # noqa: SIM102 - a compile-time branch, then a run-time one
        if (start // N) % 2 == 0:  # a c_0 row
            t = y >> K
            rem = y & ((1 << K) - 1)
            half = 1 << (K - 1)
            up = (rem > half) | ((rem == half) & ((t & 1) == 1))
            y = (t + up.to(tl.uint64)) & tmask
    tl.store(out_ptr + cols, y.to(tl.int64, bitcast=True))


@triton.jit
def _lean_sum_kernel(
    x_ptr,
    w_ptr,
    acc_ptr,
    out_ptr,
    mask_ptr,
    n,
    M,
    WEIGHTED: tl.constexpr,
    HAS_ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    inside = cols < M
    if HAS_ACC:
        acc = tl.load(acc_ptr + cols, mask=inside, other=0).to(tl.uint64, bitcast=True)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.uint64)
    ptrs = x_ptr + cols  # advanced by M per client: no i * M in int32
    for i in range(0, n):
        x = tl.load(ptrs, mask=inside, other=0).to(tl.uint64, bitcast=True)
        if WEIGHTED:
            x = x * tl.load(w_ptr + i).to(tl.uint64, bitcast=True)
        acc = acc + x
        ptrs += M
    mask = tl.load(mask_ptr).to(tl.uint64, bitcast=True)
    tl.store(out_ptr + cols, (acc & mask).to(tl.int64, bitcast=True), mask=inside)


def lean_switch(x: torch.Tensor, q0: int, b: int, k: int, block: int = 1024) -> torch.Tensor:
    """``x`` ``[C, 2, N]`` int64 contiguous coefficients below ``q0`` -> int64 ``[C, 2, N]``."""
    n = x.shape[2]
    block = min(block, n)  # N is a power of two: block divides it
    out = torch.empty_like(x)
    consts = torch.tensor(
        [q0, (1 << b) - 1, (1 << (b - k)) - 1], dtype=torch.int64, device=x.device
    )
    ratio = torch.tensor([2.0**b / q0], dtype=torch.float64, device=x.device)
    _lean_switch_kernel[(x.numel() // block,)](x, out, consts, ratio, n, B=b, K=k, BLOCK=block)
    return out


def lean_sum(
    x: torch.Tensor, b: int, w: torch.Tensor | None, acc: torch.Tensor | None, block: int = 1024
) -> torch.Tensor:
    """``x`` ``[n, ...]`` int64 contiguous, ``w`` ``[n]`` int64 or None -> ``x.shape[1:]``."""
    n = x.shape[0]
    m = x.numel() // max(n, 1)
    out = torch.empty(x.shape[1:], dtype=torch.int64, device=x.device)
    mask = torch.tensor([(1 << b) - 1], dtype=torch.int64, device=x.device)
    _lean_sum_kernel[(triton.cdiv(m, block),)](
        x, w if w is not None else mask, acc if acc is not None else out, out, mask, n, m,
        WEIGHTED=w is not None, HAS_ACC=acc is not None, BLOCK=block,
    )  # fmt: skip
    return out
