"""Triton weighted mean: ``out[j] = sum_i w[i] * x[i, j]``, one program per column block."""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _weighted_mean_kernel(x_ptr, w_ptr, out_ptr, n, d, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    # Advance a pointer by d per row rather than computing i * d: no int32 overflow at n*d > 2^31.
    ptrs = x_ptr + cols
    for i in range(0, n):
        wi = tl.load(w_ptr + i)
        acc += wi * tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
        ptrs += d
    tl.store(out_ptr + cols, acc, mask=mask)


def weighted_mean(x: torch.Tensor, w: torch.Tensor, block: int = 1024) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous, ``w`` ``[n]`` float32 summing to 1 -> float32 ``[d]``."""
    n, d = x.shape
    out = torch.empty(d, dtype=torch.float32, device=x.device)
    _weighted_mean_kernel[(triton.cdiv(d, block),)](x, w, out, n, d, BLOCK=block)
    return out
