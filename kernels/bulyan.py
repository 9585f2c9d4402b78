"""Triton coordinate stage of Bulyan: per column, the mean of the ``beta`` selected values
closest to their median.

A program owns a block of columns and the ``theta`` selected rows (padded to ``T_PAD``). It ranks
the values of each column by one pass over the rows (``rank = #smaller + #equal before``, so
ranks are a permutation), which needs no sort (``tl.sort`` sorts only the minor axis and is a
bitonic network over the padded rows, slow under ``TRITON_INTERPRET=1`` where the tests run:
see kernels/median.py). ``theta`` compares per value, like the C++ path below theta=192. The
median is the mean of ranks ``(theta-1)//2`` and ``theta//2`` (in float64, as the reference); the window
of the ``beta`` closest values grows from there one value at a time, the nearer side first and
the lower side on a tie: the ``beta`` smallest ``|v - median|``, ties to the lower value.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program holds BLOCK * T_PAD values and as many ranks: 4096 is 32 registers each per thread
# at 4 warps. At least 16 columns per program: theta <= MAX_ROWS keeps a tile at 4096. Not tuned
# on a GPU yet (none on the development machine).
TILE = 4096
MAX_ROWS = 256
# Under TRITON_INTERPRET=1 each program costs Python overhead per operation: fewer, wider tiles.
TILE_INTERPRETED = 1 << 18


@triton.jit
def _at_rank(v, rank, k):
    """Per column, the value of rank ``k`` (``k`` a [BLOCK] vector; 0 where no rank matches)."""
    return tl.sum(tl.where(rank == k[:, None], v, 0.0), axis=1)


@triton.jit
def _bulyan_kernel(
    x_ptr, idx_ptr, out_ptr, theta, beta, d, T_PAD: tl.constexpr, BLOCK: tl.constexpr
):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    cm = cols < d
    t = tl.arange(0, T_PAD)
    tm = t < theta
    rows = tl.load(idx_ptr + t, mask=tm, other=0).to(tl.int64)
    # Columns past d read zeros (not stored); padded rows get rank >= theta from the count below.
    v = tl.load(
        x_ptr + rows[None, :] * d + cols[:, None], mask=cm[:, None] & tm[None, :], other=0.0
    )
    v = v.to(tl.float32)
    rank = tl.zeros([BLOCK, T_PAD], dtype=tl.int32)
    for s in range(0, theta):
        row = tl.load(idx_ptr + s).to(tl.int64)
        u = tl.load(x_ptr + row * d + cols, mask=cm, other=0.0).to(tl.float32)[:, None]
        before = (u < v) | ((u == v) & (s < t[None, :]))
        rank += before.to(tl.int32)
    rank = tl.where(tm[None, :], rank, theta)
    lo = tl.zeros([BLOCK], dtype=tl.int32) + (theta - 1) // 2
    hi = lo + 1
    upper_mid = tl.zeros([BLOCK], dtype=tl.int32) + theta // 2
    med = (_at_rank(v, rank, lo).to(tl.float64) + _at_rank(v, rank, upper_mid).to(tl.float64)) * 0.5
    # The window is (lo, hi) exclusive once grown; lo/hi are the next candidates on each side.
    for _ in range(0, beta):
        vl = _at_rank(v, rank, lo).to(tl.float64)
        vh = _at_rank(v, rank, hi).to(tl.float64)
        take_lo = (lo >= 0) & ((hi >= theta) | (med - vl <= vh - med))
        lo = tl.where(take_lo, lo - 1, lo)
        hi = tl.where(take_lo, hi, hi + 1)
    inside = (rank > lo[:, None]) & (rank < hi[:, None])
    total = tl.sum(tl.where(inside, v, 0.0), axis=1)
    tl.store(out_ptr + cols, total / beta, mask=cm)


def bulyan_coordinates(x: torch.Tensor, idx: torch.Tensor, beta: int) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous, ``idx`` ``[theta]`` selected rows -> float32 ``[d]``."""
    d = x.shape[1]
    theta = idx.numel()
    t_pad = triton.next_power_of_2(theta)
    tile = TILE if x.device.type == "cuda" else TILE_INTERPRETED
    block = min(max(16, tile // t_pad), max(16, triton.next_power_of_2(d)))
    idx = idx.to(device=x.device, dtype=torch.int64).contiguous()
    out = torch.empty(d, dtype=torch.float32, device=x.device)
    _bulyan_kernel[(triton.cdiv(d, block),)](x, idx, out, theta, beta, d, T_PAD=t_pad, BLOCK=block)
    return out
