"""The homomorphic weighted sum of CKKS ciphertexts: coefficient-wise modular arithmetic.

A CKKS ciphertext in SEAL is two polynomials in NTT form, stored as residues ``[2, K, N]`` below
the primes ``q_k`` of its level. Adding ciphertexts adds residues mod ``q_k``; multiplying by a
non-negative integer ``w`` multiplies them by ``w mod q_k``. Neither changes the level or the
scale, and both are exactly what SEAL's ``Evaluator::add`` does (Cheon, Kim, Kim, Song, "Homomorphic
Encryption for Arithmetic of Approximate Numbers", ASIACRYPT 2017; RNS variant: Cheon, Han, Kim,
Kim, Song, SAC 2018). So over ``x`` ``[n, C, 2, K, N]``::

    out[c, p, k, j] = acc[c, p, k, j] + sum_i w_i * x[i, c, p, k, j]   (mod q_k)

Residues live in int64 tensors (primes have at most 60 bits, so every residue and every sum of
two is a non-negative int64).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..backends import Kernel, dispatch, native
from ..errors import InvalidArgument


def _add_mod(a: torch.Tensor, b: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    s = a + b  # both < q < 2^60: no overflow
    return torch.where(s >= q, s - q, s)


def _mul_mod(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``x * w mod q`` by doubling (x * w overflows int64; x * 2 mod q never does)."""
    out = torch.zeros_like(x)
    y = x.clone()
    for b in range(int(w.max()).bit_length()):
        bit = ((w >> b) & 1).bool()
        out = torch.where(bit, _add_mod(out, y, q), out)
        y = _add_mod(y, y, q)
    return out


def ckks_sum_reference(
    x: torch.Tensor,
    primes: Sequence[int],
    weights: Sequence[int] | None = None,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    """Pure-torch modular weighted sum over the clients of ``x`` ``[n, C, 2, K, N]``."""
    q = torch.tensor(list(primes), dtype=torch.int64, device=x.device)[:, None]  # [K, 1]
    out = (
        torch.zeros(x.shape[1:], dtype=torch.int64, device=x.device) if acc is None else acc.clone()
    )
    for i in range(x.shape[0]):
        term = x[i]
        if weights is not None:
            w = torch.tensor(
                [int(weights[i]) % p for p in primes], dtype=torch.int64, device=x.device
            )
            term = _mul_mod(term, w[:, None], q)
        out = _add_mod(out, term, q)
    return out


def shoup_tables(
    weights: Sequence[int], primes: Sequence[int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """``w [n, K]`` (each weight mod each prime) and Shoup's ``floor(w * 2^64 / q)``, as int64 bits."""
    w = np.array([[int(wi) % q for q in primes] for wi in weights], dtype=np.uint64).reshape(
        len(weights), len(primes)
    )
    ws = np.array(
        [[((int(wi) % q) << 64) // q for q in primes] for wi in weights], dtype=np.uint64
    ).reshape(len(weights), len(primes))
    return torch.from_numpy(w.view(np.int64)), torch.from_numpy(ws.view(np.int64))


def _sum_native(
    x: torch.Tensor,
    primes: Sequence[int],
    weights: Sequence[int] | None = None,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    q = torch.tensor(list(primes), dtype=torch.int64)
    out = torch.empty(x.shape[1:], dtype=torch.int64)
    w, ws = (None, None) if weights is None else shoup_tables(weights, primes)
    native().ckks_sum(x, q, w, ws, None if acc is None else acc.contiguous(), out)
    return out


def _sum_triton(
    x: torch.Tensor,
    primes: Sequence[int],
    weights: Sequence[int] | None = None,
    acc: torch.Tensor | None = None,
) -> torch.Tensor:
    from ..kernels.ckks_sum import ckks_sum as launch

    tables = (
        None if weights is None else tuple(t.to(x.device) for t in shoup_tables(weights, primes))
    )
    q = torch.tensor(list(primes), dtype=torch.int64, device=x.device)
    return launch(x, q, tables, None if acc is None else acc.contiguous())


KERNELS = (
    Kernel("torch", ckks_sum_reference),
    Kernel("native", _sum_native, needs="cpp"),
    Kernel("triton", _sum_triton),
)


def ckks_sum(
    x: torch.Tensor,
    primes: Sequence[int],
    weights: Sequence[int] | None = None,
    *,
    acc: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """Homomorphic weighted sum of ``x`` ``[n, C, 2, K, N]`` int64 residues -> ``[C, 2, K, N]``.

    Parameters
    ----------
    primes : the ``K`` primes of the ciphertexts' level (at most 60 bits each)
    weights : ``n`` non-negative integers, or None for a plain sum
    acc : ``[C, 2, K, N]`` partial sum to add to (streaming over blocks of clients)
    backend : "torch", "native", "triton" or None (automatic)

    Residues must already be below their primes (the codec checks every payload).
    """
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 5 or x.shape[2] != 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgument(f"ckks_sum: x must be an int64 tensor [n, C, 2, K, N]; got {got}")
    n, _, _, k, _ = x.shape
    if len(primes) != k or not all(1 < int(q) < 2**60 for q in primes):
        raise InvalidArgument(f"ckks_sum: need K={k} primes below 2^60; got {list(primes)}")
    if weights is not None:
        weights = [int(w) for w in weights]
        if len(weights) != n or any(w < 0 for w in weights):
            raise InvalidArgument(
                f"ckks_sum: weights must be {n} non-negative integers; got {weights[:8]}"
            )
    if acc is not None and (acc.dtype != torch.int64 or tuple(acc.shape) != tuple(x.shape[1:])):
        raise InvalidArgument(
            f"ckks_sum: acc must be int64 {tuple(x.shape[1:])}; got {acc.dtype} {tuple(acc.shape)}"
        )
    x = x if x.is_contiguous() else x.contiguous()
    return dispatch("ckks_sum", KERNELS, x, backend, primes, weights, acc)
