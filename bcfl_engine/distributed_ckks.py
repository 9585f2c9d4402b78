"""The homomorphic weighted sum of CKKS ciphertexts held by several ranks.

Each rank holds the ciphertexts of its clients as residues ``[n_r, C, 2, K, N]`` (int64, below
their primes) with integer weights. :func:`ckks_sum` returns, on every rank,
``sum_i w_i x_i mod q_k`` over all clients: the same bits as
:func:`bcfl_engine.he.ckks_sum.ckks_sum` over all rows in one process, for any number of ranks
and any split, because modular addition is exact, associative and commutative.

Steps: each rank sums its own rows with the engine's kernel (one ``[C, 2, K, N]`` partial sum,
whatever ``n_r``); the partial sums are reduce-scattered by hand: an all-to-all of residue
chunks, rank ``r`` receiving every rank's chunk ``r``, added mod ``q_k`` two at a time (each
operand below ``q_k < 2^60``, so a sum of two never reaches ``2^61``: no int64 overflow for any
number of ranks, where a transport SUM of ``W`` residues would overflow from ``W = 8``); an
all-gather of the reduced chunks. Each rank sends and receives about two partial sums.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Any

import torch
import torch.distributed as dist

from .distributed_comm import collective, gather_objects
from .errors import InvalidArgument


def ckks_sum(
    local: torch.Tensor,
    primes: Sequence[int],
    weights: Sequence[int] | None = None,
    *,
    group: Any = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``sum_i w_i x_i mod q_k`` over the clients of every rank -> int64 ``[C, 2, K, N]``.

    Parameters
    ----------
    local : this rank's residues, int64 ``[n_r, C, 2, K, N]`` (``n_r`` may be 0).
    primes : the ``K`` primes of the ciphertexts' level, the same on every rank.
    weights : ``n_r`` non-negative integers on every rank, or None on every rank.
    group : the process group (None: the default one).
    backend : of the local sums, as :func:`bcfl_engine.he.ckks_sum.ckks_sum`.
    """
    from .he.ckks_sum import ckks_sum as local_sum

    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgument("distributed ckks_sum: torch.distributed is not initialised")
    backend_name = str(dist.get_backend(group))
    if backend_name != "gloo":  # the same answer on every rank: the group's own backend
        raise InvalidArgument(
            f"distributed ckks_sum runs on a gloo group (CPU residues); the group's backend is "
            f"{backend_name!r}"
        )
    problem = None
    if not isinstance(local, torch.Tensor) or local.dtype != torch.int64 or local.dim() != 5:
        problem = f"residues must be an int64 [n_r, C, 2, K, N] tensor; got {_desc(local)}"
    elif weights is not None and (
        len(weights) != local.shape[0] or any(int(w) < 0 for w in weights)
    ):
        problem = f"weights must be {local.shape[0]} non-negative integers; got {list(weights)[:8]}"
    meta = {
        "problem": problem,
        "shape": None if problem else tuple(local.shape[1:]),
        "primes": [int(q) for q in primes],
        "weighted": weights is not None,
    }
    metas = gather_objects(meta, group, "exchange of ciphertext metadata")
    for r, m in enumerate(metas):
        if m["problem"]:
            raise InvalidArgument(f"distributed ckks_sum: rank {r}: {m['problem']}")
    if len({m["shape"] for m in metas}) != 1 or len({tuple(m["primes"]) for m in metas}) != 1:
        raise InvalidArgument(
            "distributed ckks_sum: ranks disagree on the ciphertext shape or primes: "
            f"{[(m['shape'], m['primes']) for m in metas]}"
        )
    if len({m["weighted"] for m in metas}) != 1:
        raise InvalidArgument("distributed ckks_sum: weights given on some ranks, not all")
    shape = local.shape[1:]
    if local.shape[0]:
        part = local_sum(local, primes, weights, backend=backend)
    else:
        part = torch.zeros(shape, dtype=torch.int64)
    return _reduce_mod(part.reshape(-1), [int(q) for q in primes], shape, group).reshape(shape)


def _desc(x: object) -> str:
    return f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _reduce_mod(
    flat: torch.Tensor, primes: list[int], shape: torch.Size, group: Any
) -> torch.Tensor:
    """Every rank's ``flat`` residues added mod their primes, on every rank."""
    world = dist.get_world_size(group)
    rank = dist.get_rank(group)
    total = flat.numel()
    per = -(-total // world)
    bounds = [(min(total, r * per), min(total, (r + 1) * per)) for r in range(world)]
    lo, hi = bounds[rank]
    recv = torch.empty(world * (hi - lo), dtype=torch.int64)
    in_splits = [b - a for a, b in bounds]
    out_splits = [hi - lo] * world
    collective(
        "all-to-all of residue chunks",
        group,
        partial(
            dist.all_to_all_single, recv, flat.contiguous(), out_splits, in_splits, group=group
        ),
    )
    # Prime of each residue of the chunk: shape [C, 2, K, N] puts prime k at (i // N) % K.
    k_count, n_coeffs = shape[-2], shape[-1]
    idx = (torch.arange(lo, hi, dtype=torch.int64) // n_coeffs) % k_count
    q = torch.tensor(primes, dtype=torch.int64)[idx]
    chunks = recv.view(world, hi - lo)
    acc = chunks[0].clone()
    for r in range(1, world):
        acc += chunks[r]  # both below q < 2^60
        acc = torch.where(acc >= q, acc - q, acc)
    parts = [torch.empty(per, dtype=torch.int64) for _ in range(world)]
    padded = torch.zeros(per, dtype=torch.int64)
    padded[: hi - lo] = acc
    collective(
        "all-gather of reduced residues",
        group,
        lambda: dist.all_gather(parts, padded, group=group),
    )
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, bounds, strict=True)])
