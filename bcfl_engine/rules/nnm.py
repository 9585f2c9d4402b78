"""Nearest-neighbour mixing (NNM): a pre-aggregation that averages each update with its neighbours.

Allouah, Farhadkhani, Guerraoui, Gupta, Pinot and Stephan, "Fixing by Mixing: A Recipe for
Optimal Byzantine ML under Heterogeneity", AISTATS 2023. Over ``[n_clients, dim]`` updates,
each ``x_i`` is replaced by the mean of its ``n - f`` nearest updates in Euclidean distance,
itself included (ties: lower index first). The result ``[n, dim]`` then goes to a robust
aggregate (Krum, median, trimmed mean, ...), whose error under heterogeneity NNM brings down to
the optimal order. The paper works with a Byzantine minority, ``n > 2f``; with ``n <= 2f`` a
neighbourhood of ``n - f`` updates may hold no honest one at all.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch
from ._common import check_rule_input, contiguous
from ._distances import (
    checked,
    nearest,
    sq_dists,
    sq_dists_native,
    sq_dists_reference,
    sq_dists_triton,
)

# Column block of the native mixing product for float16/bfloat16 storage (converted to float32
# per block): 4096 columns x n=64 = 1 MiB, about L2.
MIX_BLOCK = 4096


def _validate(x: object, f: object) -> tuple[torch.Tensor, int]:
    # Non-finite input is rejected from the distances (:func:`._distances.checked`).
    return check_rule_input(x, f, "nnm", check=False)


def nnm_select_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """Each row's ``n - f`` nearest rows, itself first: int64 ``[n, n - f]``, float64 distances."""
    return nearest(sq_dists_reference(x), x.shape[0] - f)


def nnm_reference(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    """Pure-torch NNM of ``x`` ``[n, d]``: float32 ``[n, d]``, means taken in float64."""
    dist = checked(sq_dists_reference(x), x, "nnm", check)
    nbr = nearest(dist, x.shape[0] - f).to(x.device)
    return torch.stack([x[row].double().mean(dim=0) for row in nbr]).float()


def _mix_native(x: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """``out = (A @ X) / k`` with ``A`` the 0/1 neighbour matrix: one float32 GEMM through BLAS."""
    n, d = x.shape
    k = nbr.shape[1]
    member = torch.zeros(n, n, dtype=torch.float32).scatter_(1, nbr, 1.0)
    if x.dtype == torch.float32:
        return torch.mm(member, x).div_(k)
    out = torch.empty(n, d, dtype=torch.float32)
    for j0 in range(0, d, MIX_BLOCK):
        torch.mm(member, x[:, j0 : j0 + MIX_BLOCK].float(), out=out[:, j0 : j0 + MIX_BLOCK])
    return out.div_(k)


def _nnm_native(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    dist = checked(sq_dists_native(x), x, "nnm", check)
    return _mix_native(x, nearest(dist, x.shape[0] - f))


def _nnm_triton(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    from ..kernels.nnm import mix

    dist = checked(sq_dists_triton(x), x, "nnm", check)
    return mix(contiguous(x), nearest(dist, x.shape[0] - f))


KERNELS = (
    Kernel("torch", nnm_reference),
    # Distances and mixing are both BLAS products through torch: no extension needed.
    Kernel("native", _nnm_native),
    Kernel("triton", _nnm_triton),
)


def nnm_select(
    x: torch.Tensor, f: int, *, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """The neighbourhoods NNM averages: int64 ``[n, n - f]``, each row's own index first."""
    x, f = _validate(x, f)
    return nearest(checked(sq_dists(x, backend), x, "nnm", check), x.shape[0] - f)


def nnm(x: torch.Tensor, *, f: int, backend: str | None = None, check: bool = True) -> torch.Tensor:
    """Nearest-neighbour mixing of ``x`` ``[n, d]`` -> float32 ``[n, d]``.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16 (mixed in float32).
    f : the number of Byzantine clients to tolerate; NNM needs ``n > 2f``. ``f = 0`` averages
        all updates into every row.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates; costs no pass of its own (see
        :func:`._distances.checked`).
    """
    x, f = _validate(x, f)
    return dispatch("nnm", KERNELS, x, backend, f, check=check)
