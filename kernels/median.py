"""Triton coordinate-wise median: one program per block of columns, by bisection on float keys.

A program loads its ``[BLOCK, N_PAD]`` tile (columns x rows, rows padded to a power of two and
masked) once and keeps it in registers. Each pass halves, per column, an interval of monotonic
integer keys of the floats that holds the wanted rank, counting the values at or below the
middle key, until every column has isolated it (at most 32 passes). The C++ path
(csrc/sortnet.h) interpolates its pivots instead and needs fewer passes; that search has not
been tried here, for want of a GPU to measure it on. ``tl.sort`` of
the same tile gave the same answer but ran 127x slower under ``TRITON_INTERPRET=1`` (36.5 s
against 0.29 s at n=7, d=1000), where every kernel is tested.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program holds BLOCK * N_PAD floats: 4096 is 32 registers per thread at 4 warps. MAX_ROWS
# is the n that fills a whole tile with one column.
TILE = 4096
MAX_ROWS = TILE
# Under TRITON_INTERPRET=1 (CPU tensors) each program costs Python overhead per operation, so
# the tests run the same code on fewer, larger tiles: 0.66 s against 7.2 s at n=64, d=4099.
TILE_INTERPRETED = 1 << 16


def tile_shape(n: int, device: torch.device) -> tuple[int, int]:
    """(BLOCK, N_PAD): rows padded to a power of two, columns filling the rest of the tile."""
    n_pad = triton.next_power_of_2(n)
    tile = TILE if device.type == "cuda" else TILE_INTERPRETED
    return max(1, tile // n_pad), n_pad


@triton.jit
def load_tile(x_ptr, n, d, N_PAD: tl.constexpr, BLOCK: tl.constexpr):
    """The program's columns: (cols [BLOCK], valid [BLOCK, N_PAD], tile [BLOCK, N_PAD] float32)."""
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    rows = tl.arange(0, N_PAD)
    # Padded rows are masked out of every count; columns past d read zeros (results not stored).
    valid = (rows[None, :] < n) & (cols[:, None] >= 0)
    # int64 row offsets: n * d may pass 2^31 elements.
    ptrs = x_ptr + rows[None, :].to(tl.int64) * d + cols[:, None]
    tile = tl.load(ptrs, mask=valid & (cols[:, None] < d), other=0.0).to(tl.float32)
    # -0 and +0 compare equal but have different keys: make every zero -0 (as csrc/column_tiles.h does).
    tile = tl.where(tile == 0.0, -0.0, tile)
    return cols, valid, tile


@triton.jit
def nonfinite_sum(tile):
    """0 when every value of the tile is finite, else NaN (``v - v`` is NaN for NaN and inf; the
    masked-out places hold 0): the caller's finite check, from the tile already in registers
    (a median or a trimmed mean can drop a NaN or an infinity, so their results cannot tell)."""
    return tl.sum(tl.sum(tile - tile, axis=1), axis=0)


@triton.jit
def _key(v):
    b = v.to(tl.int32, bitcast=True)
    return b ^ ((b >> 31) & 0x7FFFFFFF)


@triton.jit
def _value(k):
    return (k ^ ((k >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)


@triton.jit
def rank_value(tile, valid, r):
    """Per column, the value of rank ``r`` (0-based) and the count of values <= it."""
    lo = _key(tl.min(tl.where(valid, tile, float("inf")), axis=1))
    hi = _key(tl.max(tl.where(valid, tile, float("-inf")), axis=1))
    chi = tl.sum(valid.to(tl.int32), axis=1)  # #{x <= hi}
    # Until every column's bracket is one key or holds exactly r + 1 values <= hi; each pass
    # halves every bracket, so 32 passes end it even on garbage (NaN under check=False).
    passes = 0
    while (tl.max(((lo != hi) & (chi != r + 1)).to(tl.int32), axis=0) > 0) & (passes < 33):
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        # _value(mid), written out: a jitted call inside the loop costs the interpreter 5 ms.
        pivot = (mid ^ ((mid >> 31) & 0x7FFFFFFF)).to(tl.float32, bitcast=True)
        cnt = tl.sum((valid & (tile <= pivot[:, None])).to(tl.int32), axis=1)
        down = cnt > r
        hi = tl.where(down, mid, hi)
        chi = tl.where(down, cnt, chi)
        lo = tl.where(down, lo, mid + 1)
        passes += 1
    # Rank r is the largest value <= hi.
    v = tl.max(tl.where(valid & (tile <= _value(hi)[:, None]), tile, float("-inf")), axis=1)
    return v, chi


@triton.jit
def _median_kernel(x_ptr, out_ptr, chk_ptr, n, d, N_PAD: tl.constexpr, BLOCK: tl.constexpr):
    cols, valid, tile = load_tile(x_ptr, n, d, N_PAD, BLOCK)
    tl.store(chk_ptr + tl.program_id(0), nonfinite_sum(tile))
    r = (n - 1) // 2
    lo, chi = rank_value(tile, valid, r)
    # Rank r + 1: tied with rank r if more than r + 1 values are <= it, else the next value up.
    above = tl.min(tl.where(valid & (tile > lo[:, None]), tile, float("inf")), axis=1)
    hi = tl.where(chi >= r + 2, lo, above)
    # Odd n: the middle value itself (lo + hi would overflow above 1.7e38).
    med = tl.where(n % 2 == 1, lo, (lo + hi) * 0.5)
    tl.store(out_ptr + cols, med, mask=cols < d)


def median(x: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """``x`` ``[n, d]`` contiguous, n <= MAX_ROWS -> (float32 ``[d]`` coordinate-wise median,
    whether every value of ``x`` was finite)."""
    n, d = x.shape
    block, n_pad = tile_shape(n, x.device)
    programs = triton.cdiv(d, block)
    out = torch.empty(d, dtype=torch.float32, device=x.device)
    chk = torch.empty(programs, dtype=torch.float32, device=x.device)
    _median_kernel[(programs,)](x, out, chk, n, d, N_PAD=n_pad, BLOCK=block)
    return out, bool(torch.isfinite(chk).all())
