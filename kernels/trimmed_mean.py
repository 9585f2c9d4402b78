"""Triton coordinate-wise trimmed mean: one program per block of columns finds ranks f and
n-1-f by bisection on float keys (kernels/median.py), then sums what lies between them:

    kept sum = sum{a < x < b} + a * (#{x <= a} - f) + b * (n - f - #{x < b})

so that ties at a and b enter with their kept multiplicity (csrc/trimmed_mean.cpp does the same).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .median import MAX_ROWS, load_tile, nonfinite_sum, rank_value, tile_shape

__all__ = ["MAX_ROWS", "trimmed_mean"]


@triton.jit
def _trimmed_mean_kernel(
    x_ptr, out_ptr, chk_ptr, n, d, f, N_PAD: tl.constexpr, BLOCK: tl.constexpr
):
    cols, valid, tile = load_tile(x_ptr, n, d, N_PAD, BLOCK)
    tl.store(chk_ptr + tl.program_id(0), nonfinite_sum(tile))
    a, le_a = rank_value(tile, valid, f)
    b, _ = rank_value(tile, valid, n - 1 - f)
    inside = valid & (tile > a[:, None]) & (tile < b[:, None])
    s = tl.sum(tl.where(inside, tile, 0.0), axis=1)
    lt_b = le_a + tl.sum(inside.to(tl.int32), axis=1)
    kept = (n - 2 * f).to(tl.float32)
    mean = (s + a * (le_a - f).to(tl.float32) + b * (n - f - lt_b).to(tl.float32)) / kept
    tl.store(out_ptr + cols, tl.where(a == b, a, mean), mask=cols < d)


def trimmed_mean(x: torch.Tensor, f: int) -> tuple[torch.Tensor, bool]:
    """``x`` ``[n, d]`` contiguous, n <= MAX_ROWS, n > 2f -> (float32 ``[d]`` trimmed mean,
    whether every value of ``x`` was finite)."""
    n, d = x.shape
    block, n_pad = tile_shape(n, x.device)
    programs = triton.cdiv(d, block)
    out = torch.empty(d, dtype=torch.float32, device=x.device)
    chk = torch.empty(programs, dtype=torch.float32, device=x.device)
    _trimmed_mean_kernel[(programs,)](x, out, chk, n, d, f, N_PAD=n_pad, BLOCK=block)
    return out, bool(torch.isfinite(chk).all())
