"""Triton norm clipping: ``out[i, :] = x[i, :] * min(1, max_norm / ||x[i, :]||)``.

Two launches over a 1-D grid of (row, column block) programs: :func:`row_sq_norms` writes
each block's sum of squares to ``partial[i, block]`` and sums them per row in float64 (fixed
order, no atomics); the caller (``bcfl_engine.rules.clip``) turns those into row scales, after
summing again in float64 any row whose float32 sums overflowed or underflowed, and
:func:`scale_rows` writes the scaled float32 rows. A row is one
of many programs rather than one program, so a few long rows (d = 1M) still fill the GPU.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _row_sumsq_kernel(x_ptr, part_ptr, d, n_blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = pid // n_blocks
    blk = pid % n_blocks
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    v = tl.load(x_ptr + row.to(tl.int64) * d + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(part_ptr + pid, tl.sum(v * v, axis=0))


@triton.jit
def _scale_rows_kernel(x_ptr, scale_ptr, out_ptr, d, n_blocks, BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    row = pid // n_blocks
    blk = pid % n_blocks
    cols = blk * BLOCK + tl.arange(0, BLOCK)
    mask = cols < d
    offs = row.to(tl.int64) * d + cols
    s = tl.load(scale_ptr + row)
    v = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + offs, v * s, mask=mask)


def row_sq_norms(x: torch.Tensor, block: int = 4096) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous -> ``||x_i||^2`` float64 ``[n]``: float32 sums per block of
    ``block`` columns, added per row in float64 in a fixed order.

    Block 4096 (16 KiB float32 per program): large enough that the per-program partial is
    1/4096 of the traffic, small enough that d = 100k still gives 25 programs per row.
    """
    n, d = x.shape
    block = min(block, triton.next_power_of_2(d))
    n_blocks = triton.cdiv(d, block)
    part = torch.empty((n, n_blocks), dtype=torch.float32, device=x.device)
    _row_sumsq_kernel[(n * n_blocks,)](x, part, d, n_blocks, BLOCK=block)
    return part.sum(dim=1, dtype=torch.float64)


def scale_rows(
    x: torch.Tensor, scale: torch.Tensor, block: int = 4096, out: torch.Tensor | None = None
) -> torch.Tensor:
    """``out[i, :] = x[i, :] * scale[i]`` (float32 ``scale`` ``[n]``) -> float32 ``[n, d]``;
    ``out`` may be ``x`` itself (float32): each element is read before it is written."""
    n, d = x.shape
    block = min(block, triton.next_power_of_2(d))
    n_blocks = triton.cdiv(d, block)
    if out is None:
        out = torch.empty((n, d), dtype=torch.float32, device=x.device)
    scale = scale.to(device=x.device, dtype=torch.float32).contiguous()
    _scale_rows_kernel[(n * n_blocks,)](x, scale, out, d, n_blocks, BLOCK=block)
    return out
