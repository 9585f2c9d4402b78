"""Triton mean of selected rows: ``out[j] = sum_t x[idx[t], j] / m``, one program per column block.

The second pass of Krum-type rules: after the selection on the ``[n, n]`` distances, only the
``m`` chosen rows are read, once each.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

# Under TRITON_INTERPRET=1 every program costs Python overhead per operation, so the tests run
# the same code on fewer, wider blocks.
BLOCK = 1024
BLOCK_INTERPRETED = 1 << 14


@triton.jit
def _select_mean_kernel(x_ptr, idx_ptr, out_ptr, m, d, BLOCK: tl.constexpr):
    cols = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    # float64 sums: float32 ones of rows near 3e38 overflow though their mean is finite.
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for t in range(0, m):
        # int64 row offset: idx * d passes 2^31 at n=256, d=8M.
        row = tl.load(idx_ptr + t).to(tl.int64)
        acc += tl.load(x_ptr + row * d + cols, mask=mask, other=0.0).to(tl.float64)
    tl.store(out_ptr + cols, (acc / m).to(tl.float32), mask=mask)


def select_mean(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous, ``idx`` ``[m]`` int64 row indices -> float32 ``[d]``."""
    d = x.shape[1]
    block = BLOCK if x.device.type == "cuda" else BLOCK_INTERPRETED
    block = min(block, max(16, triton.next_power_of_2(d)))
    idx = idx.to(device=x.device, dtype=torch.int64).contiguous()
    out = torch.empty(d, dtype=torch.float32, device=x.device)
    _select_mean_kernel[(triton.cdiv(d, block),)](x, idx, out, idx.numel(), d, BLOCK=block)
    return out
