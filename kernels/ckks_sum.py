"""Triton modular weighted sum of CKKS residues: one program per block of one residue row.

``out[r, j] = acc[r, j] + sum_i w[i, r % K] * x[i, r, j] mod q[r % K]`` over ``x`` viewed as
``[n, rows * N]``. A block never straddles two rows (BLOCK divides N), so each program has one
prime and one weight per client. Residues are loaded as int64 and bit-cast to uint64: the
weighted path needs the unsigned 64-bit multiply-high (``tl.umulhi``) of Shoup's method
(``r = x*w - umulhi(x, w')*q``, then one conditional subtraction), which Triton lowers to
``mul.hi.u64`` on CUDA and the interpreter emulates with Python integers.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _ckks_sum_kernel(
    x_ptr,
    q_ptr,
    w_ptr,
    ws_ptr,
    acc_ptr,
    out_ptr,
    n,
    M,
    N,
    K,
    WEIGHTED: tl.constexpr,
    HAS_ACC: tl.constexpr,
    BLOCK: tl.constexpr,
):
    pid = tl.program_id(0)
    start = pid.to(tl.int64) * BLOCK
    cols = start + tl.arange(0, BLOCK)
    k = (start // N) % K
    q = tl.load(q_ptr + k).to(tl.uint64, bitcast=True)
    if HAS_ACC:
        acc = tl.load(acc_ptr + cols).to(tl.uint64, bitcast=True)
    else:
        acc = tl.zeros([BLOCK], dtype=tl.uint64)
    # Advance a pointer by M per client rather than computing i * M: no int32 overflow.
    ptrs = x_ptr + cols
    for i in range(0, n):
        x = tl.load(ptrs).to(tl.uint64, bitcast=True)
        if WEIGHTED:
            w = tl.load(w_ptr + i * K + k).to(tl.uint64, bitcast=True)
            ws = tl.load(ws_ptr + i * K + k).to(tl.uint64, bitcast=True)
            x = x * w - tl.umulhi(x, ws) * q
            x = tl.where(x >= q, x - q, x)
        acc = acc + x
        acc = tl.where(acc >= q, acc - q, acc)
        ptrs += M
    tl.store(out_ptr + cols, acc.to(tl.int64, bitcast=True))


def ckks_sum(
    x: torch.Tensor,
    q: torch.Tensor,
    tables: tuple[torch.Tensor, torch.Tensor] | None,
    acc: torch.Tensor | None,
    block: int = 1024,
) -> torch.Tensor:
    """``x`` ``[n, C, 2, K, N]`` int64 contiguous, ``q`` ``[K]``, Shoup tables ``[n, K]`` or None."""
    n, c, _, k, N = x.shape
    M = c * 2 * k * N
    block = min(block, N)  # N is a power of two >= 1024 in SEAL: block divides it
    out = torch.empty(x.shape[1:], dtype=torch.int64, device=x.device)
    w, ws = tables if tables is not None else (q, q)
    _ckks_sum_kernel[(M // block,)](
        x, q, w, ws, acc if acc is not None else out, out, n, M, N, k,
        WEIGHTED=tables is not None, HAS_ACC=acc is not None, BLOCK=block,
    )  # fmt: skip
    return out
