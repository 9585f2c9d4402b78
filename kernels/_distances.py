"""Triton Gram matrix of centred updates: ``G = (X - p)(X - p)^T``, upper triangle only.

One program per (tile pair ``I <= J`` of the upper triangle, split of the columns). It streams
its columns in ``BLOCK_K`` steps through ``tl.dot`` with a float32 accumulator and writes its
tile to a float64 partial ``[splits, NP, NP]``; the launcher sums the splits in float64. So
float32 sums cover one split (a few thousand columns) and float64 adds the splits, as in the
native path. ``input_precision="ieee"``: TF32 keeps 10 mantissa bits (~5e-4 relative error per
product), which the cancellation in ``G_ii + G_jj - 2 G_ij`` would carry into the distances.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _gram_kernel(
    x_ptr,
    p_ptr,
    pairs_ptr,
    out_ptr,
    n,
    d,
    split_cols,
    NP: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    t = tl.program_id(0)
    s = tl.program_id(1)
    ti = tl.load(pairs_ptr + 2 * t)
    tj = tl.load(pairs_ptr + 2 * t + 1)
    ri = ti * BLOCK_N + tl.arange(0, BLOCK_N)
    rj = tj * BLOCK_N + tl.arange(0, BLOCK_N)
    # int64 row offsets: n * d passes 2^31 at n=256, d=8M.
    oi = ri.to(tl.int64)[:, None] * d
    oj = rj.to(tl.int64)[:, None] * d
    c0 = s * split_cols
    c1 = tl.minimum(c0 + split_cols, d)
    acc = tl.zeros([BLOCK_N, BLOCK_N], dtype=tl.float32)
    for k in range(c0, c1, BLOCK_K):
        cols = k + tl.arange(0, BLOCK_K)
        cm = cols < c1
        p = tl.load(p_ptr + cols, mask=cm, other=0.0)
        mi = (ri < n)[:, None] & cm[None, :]
        mj = (rj < n)[:, None] & cm[None, :]
        # Re-mask after centring: a padded entry must be 0, not -p.
        a = tl.where(
            mi,
            tl.load(x_ptr + oi + cols[None, :], mask=mi, other=0.0).to(tl.float32) - p[None, :],
            0.0,
        )
        b = tl.where(
            mj,
            tl.load(x_ptr + oj + cols[None, :], mask=mj, other=0.0).to(tl.float32) - p[None, :],
            0.0,
        )
        acc += tl.dot(a, tl.trans(b), input_precision="ieee")
    r = tl.arange(0, BLOCK_N)
    dst = (
        out_ptr
        + s.to(tl.int64) * NP * NP
        + (ti * BLOCK_N + r)[:, None] * NP
        + (tj * BLOCK_N + r)[None, :]
    )
    tl.store(dst, acc.to(tl.float64))


def gram(x: torch.Tensor, p: torch.Tensor, split_cols: int | None = None) -> torch.Tensor:
    """``x`` ``[n, d]`` contiguous, ``p`` ``[d]`` float32 -> float64 ``[n, n]`` (upper triangle).

    ``split_cols``: columns per program (any; masked steps of ``BLOCK_K``); by default enough splits
    for ~1024 programs, so that a GPU with ~130 SMs has several per SM even at n <= 64.
    """
    n, d = x.shape
    block_n = 32 if n <= 32 else 64
    tiles = triton.cdiv(n, block_n)
    pairs = [(i, j) for i in range(tiles) for j in range(i, tiles)]
    if x.device.type == "cuda":
        # A [64, 64] float32 accumulator is 32 registers per thread at 4 warps, the two
        # [64, 32] operands 16 each. Not tuned on a GPU yet (none on the development machine).
        block_k = 64 if block_n == 32 else 32
        programs = 1024
    else:
        # TRITON_INTERPRET=1 pays Python overhead per operation and program: a few wide steps,
        # still two splits, so that the float64 sum of partial tiles is exercised by the tests.
        block_k = 512
        programs = 2 * len(pairs)
    if split_cols is None:
        splits = max(1, min(triton.cdiv(d, 4 * block_k), programs // len(pairs)))
        split_cols = triton.cdiv(triton.cdiv(d, splits), block_k) * block_k
    splits = triton.cdiv(d, split_cols)
    np_ = tiles * block_n
    pair_t = torch.tensor(pairs, dtype=torch.int32, device=x.device).reshape(-1)
    part = torch.zeros(splits, np_, np_, dtype=torch.float64, device=x.device)
    _gram_kernel[(len(pairs), splits)](
        x, p, pair_t, part, n, d, split_cols, NP=np_, BLOCK_N=block_n, BLOCK_K=block_k
    )
    return part.sum(dim=0)[:n, :n]
