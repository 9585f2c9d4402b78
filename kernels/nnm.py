"""Triton nearest-neighbour mixing: ``out[i, j] = sum_t x[nbr[i, t], j] / k``.

One program per (tile of up to 64 output rows, block of columns) walks the ``n`` input rows
once, adding row ``r`` to the outputs whose neighbourhood holds it (a 0/1 membership matrix, so
each output is a plain float32 sum of the chosen values, then one division by ``k``). Each
input row is read once per row tile: ``n d`` reads for ``n <= 64``, against ``n k d`` for a
gather per output row.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# A program holds ROWS * BLOCK float32 accumulators: 8192 is 64 registers per thread at 4 warps.
TILE = 8192
MAX_TILE_ROWS = 64
# Under TRITON_INTERPRET=1 each program costs Python overhead per operation: fewer, wider tiles.
TILE_INTERPRETED = 1 << 18


@triton.jit
def _mix_kernel(x_ptr, member_ptr, out_ptr, n, d, k, ROWS: tl.constexpr, BLOCK: tl.constexpr):
    rows = tl.program_id(0) * ROWS + tl.arange(0, ROWS)
    rm = rows < n
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    cm = cols < d
    acc = tl.zeros([ROWS, BLOCK], dtype=tl.float32)
    # Advance a pointer by d per row rather than computing r * d: no int32 overflow at n*d > 2^31.
    ptrs = x_ptr + cols
    for r in range(0, n):
        # member[i, r] = 1.0 when r is among the neighbours of i.
        w = tl.load(member_ptr + rows * n + r, mask=rm, other=0.0)
        v = tl.load(ptrs, mask=cm, other=0.0).to(tl.float32)
        acc += w[:, None] * v[None, :]
        ptrs += d
    dst = out_ptr + rows.to(tl.int64)[:, None] * d + cols[None, :]
    tl.store(dst, acc / k, mask=rm[:, None] & cm[None, :])


def mix(x: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous, ``nbr`` ``[n, k]`` row indices -> float32 ``[n, d]``."""
    n, d = x.shape
    k = nbr.shape[1]
    member = torch.zeros(n, n, dtype=torch.float32, device=x.device)
    member.scatter_(1, nbr.to(device=x.device, dtype=torch.int64), 1.0)
    rows = min(triton.next_power_of_2(n), MAX_TILE_ROWS)
    tile = TILE if x.device.type == "cuda" else TILE_INTERPRETED
    block = min(tile // rows, max(16, triton.next_power_of_2(d)))
    out = torch.empty(n, d, dtype=torch.float32, device=x.device)
    grid = (triton.cdiv(n, rows), triton.cdiv(d, block))
    _mix_kernel[grid](x, member, out, n, d, k, ROWS=rows, BLOCK=block)
    return out
