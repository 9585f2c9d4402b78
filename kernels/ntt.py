"""Triton negacyclic NTT in SEAL's convention (see ``bcfl_engine/he/ntt.py``): one launch per
stage, one program per block of butterflies of one polynomial.

Residues are int64 in memory (below ``q < 2^62``) and bit-cast to uint64 for the arithmetic:
Shoup's product ``r = y*w - umulhi(y, w')*q`` (one conditional subtraction) needs the unsigned
64-bit multiply-high, which Triton lowers to ``mul.hi.u64`` on CUDA and the interpreter
emulates. Butterflies keep residues fully reduced, so the output equals the numpy reference
bit for bit.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ntt_stage_kernel(
    x_ptr, w_ptr, ws_ptr, q_ptr, N, m, t, INVERSE: tl.constexpr, BLOCK: tl.constexpr
):
    row = tl.program_id(1).to(tl.int64)
    b = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = b < N // 2
    i = b // t
    iu = row * N + 2 * i * t + b % t
    iv = iu + t
    q = tl.load(q_ptr).to(tl.uint64, bitcast=True)
    w = tl.load(w_ptr + m + i, mask=mask, other=0).to(tl.uint64, bitcast=True)
    ws = tl.load(ws_ptr + m + i, mask=mask, other=0).to(tl.uint64, bitcast=True)
    x = tl.load(x_ptr + iu, mask=mask, other=0).to(tl.uint64, bitcast=True)
    y = tl.load(x_ptr + iv, mask=mask, other=0).to(tl.uint64, bitcast=True)
    if INVERSE:  # Gentleman-Sande: (x + y, (x - y) w)
        s = x + y
        s = tl.where(s >= q, s - q, s)
        d = tl.where(x >= y, x - y, x + (q - y))
        d = d * w - tl.umulhi(d, ws) * q
        d = tl.where(d >= q, d - q, d)
    else:  # Cooley-Tukey: (x + y w, x - y w)
        y = y * w - tl.umulhi(y, ws) * q
        y = tl.where(y >= q, y - q, y)
        s = x + y
        s = tl.where(s >= q, s - q, s)
        d = tl.where(x >= y, x - y, x + (q - y))
    tl.store(x_ptr + iu, s.to(tl.int64, bitcast=True), mask=mask)
    tl.store(x_ptr + iv, d.to(tl.int64, bitcast=True), mask=mask)


@triton.jit
def _scale_kernel(x_ptr, c_ptr, q_ptr, total, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = idx < total
    q = tl.load(q_ptr).to(tl.uint64, bitcast=True)
    c = tl.load(c_ptr).to(tl.uint64, bitcast=True)
    cs = tl.load(c_ptr + 1).to(tl.uint64, bitcast=True)
    x = tl.load(x_ptr + idx, mask=mask, other=0).to(tl.uint64, bitcast=True)
    x = x * c - tl.umulhi(x, cs) * q
    x = tl.where(x >= q, x - q, x)
    tl.store(x_ptr + idx, x.to(tl.int64, bitcast=True), mask=mask)


def ntt(
    x: torch.Tensor,
    q: torch.Tensor,
    w: torch.Tensor,
    ws: torch.Tensor,
    inverse: bool,
    ninv: torch.Tensor,
    block: int = 1024,
) -> torch.Tensor:
    """In place on ``x`` ``[rows, N]`` int64 contiguous; ``q`` ``[1]``, twiddles ``w``, ``ws``
    ``[N]``, ``ninv`` ``[2]`` (``N^-1`` and its Shoup constant, read when ``inverse``)."""
    rows, n = x.shape
    block = min(block, n // 2)
    grid = (triton.cdiv(n // 2, block), rows)
    if inverse:
        m, t = n, 1
        while m > 1:
            h = m // 2
            _ntt_stage_kernel[grid](x, w, ws, q, n, h, t, INVERSE=True, BLOCK=block)
            t *= 2
            m = h
        total = rows * n
        _scale_kernel[(triton.cdiv(total, 1024),)](x, ninv, q, total, BLOCK=1024)
    else:
        m, t = 1, n
        while m < n:
            t //= 2
            _ntt_stage_kernel[grid](x, w, ws, q, n, m, t, INVERSE=False, BLOCK=block)
            m *= 2
    return x
