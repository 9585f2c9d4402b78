"""Krum: the update closest to its ``n - f - 2`` nearest neighbours.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017. Over ``[n_clients, dim]`` updates,
``score_i = sum of ||x_i - x_j||^2 over the n - f - 2 nearest j != i`` and Krum returns the
update with the lowest score (ties: the lowest index). It tolerates ``f`` Byzantine clients
when ``n > 2f + 2`` (the paper's condition ``2f + 2 < n``).

The distances come from :mod:`._distances`: float64 directly in the reference, a centred
float32/float64 Gram streamed over column blocks in the fast paths; the selection itself is
the same code for every backend.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch
from ._common import check_rule_input
from ._distances import (
    checked,
    krum_order,
    sq_dists,
    sq_dists_native,
    sq_dists_reference,
    sq_dists_triton,
)


def _validate(x: object, f: object) -> tuple[torch.Tensor, int]:
    # Non-finite input is rejected from the distances (:func:`._distances.checked`).
    return check_rule_input(x, f, "krum", check=False)


def krum_select_reference(x: torch.Tensor, f: int) -> int:
    """Index of the Krum winner of ``x`` ``[n, d]``, from float64 distances summed directly."""
    return int(krum_order(sq_dists_reference(x), f)[0])


def krum_reference(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    """Pure-torch Krum of ``x`` ``[n, d]``: float32 ``[d]``, the winning update."""
    dist = checked(sq_dists_reference(x), x, "krum", check)
    return x[int(krum_order(dist, f)[0])].float()


def _krum_native(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    return x[int(krum_order(checked(sq_dists_native(x), x, "krum", check), f)[0])].float()


def _krum_triton(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    return x[int(krum_order(checked(sq_dists_triton(x), x, "krum", check), f)[0])].float()


KERNELS = (
    Kernel("torch", krum_reference),
    # The work is the Gram matrix, done by torch's BLAS (see _distances.py): no extension needed.
    Kernel("native", _krum_native),
    Kernel("triton", _krum_triton),
)


def krum_select(x: torch.Tensor, f: int, *, backend: str | None = None, check: bool = True) -> int:
    """The index of the update Krum selects (see :func:`krum`)."""
    x, f = _validate(x, f)
    return int(krum_order(checked(sq_dists(x, backend), x, "krum", check), f)[0])


def krum(
    x: torch.Tensor, *, f: int, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """Krum of ``x`` ``[n, d]`` -> float32 ``[d]``: the update closest to its nearest others.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16.
    f : the number of Byzantine clients to tolerate; Krum needs ``n > 2f + 2``.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates; costs no pass of its own (see
        :func:`._distances.checked`).

    Returns
    -------
    The selected row, converted to float32 (an exact copy of one client's update).
    """
    x, f = _validate(x, f)
    return dispatch("krum", KERNELS, x, backend, f, check=check)
