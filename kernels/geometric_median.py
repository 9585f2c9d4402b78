"""Triton step of the iterative rules (geometric median, centered clipping).

``v = beta * v_in + sum_i coef[i] * x[i, :]``, then every row's squared distance to ``v``, in
one launch: one program per column block, which sums its ``[n, BLOCK]`` tile over the rows and
then measures each row's distance to the block of ``v`` it just formed. Each program writes
``partial[i, block]``; the launcher sums those in float64, in a fixed order (no atomics: the same
input gives the same bits on every run, which an audit recomputing a round needs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _combine_distances_kernel(
    x_ptr,
    coef_ptr,
    vin_ptr,
    vout_ptr,
    part_ptr,
    beta,
    n,
    d,
    n_blocks,
    BLOCK: tl.constexpr,
    ROWS: tl.constexpr,
    HAS_VIN: tl.constexpr,
    WITH_DIST: tl.constexpr,
    ONE_TILE: tl.constexpr,
):
    pid = tl.program_id(0)
    cols = pid * BLOCK + tl.arange(0, BLOCK)
    cmask = cols < d
    rows = tl.arange(0, ROWS)
    if HAS_VIN:
        acc = beta * tl.load(vin_ptr + cols, mask=cmask, other=0.0)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.float32)
    if ONE_TILE:
        # All n rows fit one tile held in registers: x is read once for both sums.
        rmask = rows < n
        mask = rmask[:, None] & cmask[None, :]
        offs = rows[:, None].to(tl.int64) * d + cols[None, :]
        tile = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        c = tl.load(coef_ptr + rows, mask=rmask, other=0.0)
        acc += tl.sum(c[:, None] * tile, axis=0)
        tl.store(vout_ptr + cols, acc, mask=cmask)
        if WITH_DIST:
            diff = tl.where(mask, tile - acc[None, :], 0.0)
            part = tl.sum(diff * diff, axis=1)
            tl.store(part_ptr + rows.to(tl.int64) * n_blocks + pid, part, mask=rmask)
    else:
        for r0 in range(0, n, ROWS):
            r = r0 + rows
            rmask = r < n
            mask = rmask[:, None] & cmask[None, :]
            offs = r[:, None].to(tl.int64) * d + cols[None, :]
            tile = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            c = tl.load(coef_ptr + r, mask=rmask, other=0.0)
            acc += tl.sum(c[:, None] * tile, axis=0)
        tl.store(vout_ptr + cols, acc, mask=cmask)
        if WITH_DIST:
            # Second walk over the same [n, BLOCK] tile: from L2 when the launcher kept it small.
            for r0 in range(0, n, ROWS):
                r = r0 + rows
                rmask = r < n
                mask = rmask[:, None] & cmask[None, :]
                offs = r[:, None].to(tl.int64) * d + cols[None, :]
                tile = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
                diff = tl.where(mask, tile - acc[None, :], 0.0)
                part = tl.sum(diff * diff, axis=1)
                tl.store(part_ptr + r.to(tl.int64) * n_blocks + pid, part, mask=rmask)


# Register tile: 8192 float32 per program (64 per thread at 4 warps) holds all rows of a block
# when n <= 128 with BLOCK >= 64 (256-byte row runs). Above that the tile is walked twice and
# BLOCK shrinks so that [n, BLOCK] stays near 128 KiB: 50 MiB of H200 L2 over ~264 resident
# programs (2 per SM) is ~190 KiB each. Sizes from that arithmetic, not yet tuned on a GPU.
TILE_ELEMS = 8192
L2_TILE_BYTES = 128 * 1024


def _layout(n: int, elem: int) -> tuple[int, int, bool]:
    """``(BLOCK, ROWS, ONE_TILE)`` for ``n`` rows of ``elem``-byte storage."""
    rows = triton.next_power_of_2(n)
    if rows * 64 <= TILE_ELEMS:
        return min(1024, TILE_ELEMS // rows), rows, True
    block = max(32, min(1024, triton.next_power_of_2(L2_TILE_BYTES // (n * elem) + 1) // 2))
    return block, max(1, min(rows, TILE_ELEMS // block)), False


def combine_distances(
    x: torch.Tensor, coef: torch.Tensor, beta: float, v_in: torch.Tensor | None, with_dist: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x`` ``[n, d]`` contiguous, ``coef`` ``[n]`` float32 -> (``v`` float32 ``[d]``,
    squared distances ``[n]`` float64, empty unless ``with_dist``)."""
    n, d = x.shape
    block, rows, one_tile = _layout(n, x.element_size())
    n_blocks = triton.cdiv(d, block)
    v_out = torch.empty(d, dtype=torch.float32, device=x.device)
    part = torch.empty((n, n_blocks) if with_dist else (1,), dtype=torch.float32, device=x.device)
    coef = coef.to(device=x.device, dtype=torch.float32).contiguous()
    vin = v_out if v_in is None else v_in.to(device=x.device, dtype=torch.float32).contiguous()
    _combine_distances_kernel[(n_blocks,)](
        x,
        coef,
        vin,
        v_out,
        part,
        float(beta),
        n,
        d,
        n_blocks,
        BLOCK=block,
        ROWS=rows,
        HAS_VIN=v_in is not None,
        WITH_DIST=with_dist,
        ONE_TILE=one_tile,
    )
    dist2 = (
        part.sum(dim=1, dtype=torch.float64)
        if with_dist
        else part.new_empty(0, dtype=torch.float64)
    )
    return v_out, dist2
