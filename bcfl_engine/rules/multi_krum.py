"""Multi-Krum: the mean of the ``m`` updates with the best Krum scores.

Blanchard, El Mhamdi, Guerraoui and Stainer, "Machine Learning with Adversaries: Byzantine
Tolerant Gradient Descent", NeurIPS 2017 (Section 5): with Krum's
``score_i = sum of ||x_i - x_j||^2 over the n - f - 2 nearest j != i`` over ``[n_clients, dim]``
updates, average the ``m`` lowest-scored updates (ties: lower index first). ``m = 1`` is Krum,
``m = n`` the plain mean; the default ``m = n - f`` keeps as many as there may be honest
clients. Needs ``n > 2f + 2``, as Krum.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch, native
from ..errors import InvalidArgument
from ._common import check_rule_input, contiguous
from ._distances import (
    checked,
    krum_order,
    sq_dists,
    sq_dists_native,
    sq_dists_reference,
    sq_dists_triton,
)


def _validate(x: object, f: object, m: object) -> tuple[torch.Tensor, int, int]:
    # Non-finite input is rejected from the distances (:func:`._distances.checked`).
    x, f = check_rule_input(x, f, "multi_krum", check=False)
    n = x.shape[0]
    if m is None:
        m = n - f
    if not isinstance(m, int) or isinstance(m, bool) or not 1 <= m <= n:
        raise InvalidArgument(f"multi_krum: m must be an int in [1, n={n}]; got {m!r}")
    return x, f, m


def multi_krum_select_reference(x: torch.Tensor, f: int, m: int) -> torch.Tensor:
    """The ``m`` best-scored rows of ``x``, best first (int64 ``[m]``), from float64 distances."""
    return krum_order(sq_dists_reference(x), f)[:m]


def multi_krum_reference(x: torch.Tensor, f: int, m: int, check: bool = False) -> torch.Tensor:
    """Pure-torch Multi-Krum of ``x`` ``[n, d]``: float32 ``[d]``, mean taken in float64."""
    dist = checked(sq_dists_reference(x), x, "multi_krum", check)
    idx = krum_order(dist, f)[:m].to(x.device)
    return x[idx].double().mean(dim=0).float()


def select_mean_native(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Mean of rows ``idx`` of ``x`` by the C++ kernel: float32 ``[d]`` (also Krum's copy)."""
    x = contiguous(x)
    idx = idx.to(torch.int64).contiguous()
    out = torch.empty(x.shape[1], dtype=torch.float32)
    native().select_mean(x, idx, out)
    return out


def _multi_krum_native(x: torch.Tensor, f: int, m: int, check: bool = False) -> torch.Tensor:
    dist = checked(sq_dists_native(x), x, "multi_krum", check)
    return select_mean_native(x, krum_order(dist, f)[:m])


def _multi_krum_triton(x: torch.Tensor, f: int, m: int, check: bool = False) -> torch.Tensor:
    from ..kernels.multi_krum import select_mean

    dist = checked(sq_dists_triton(x), x, "multi_krum", check)
    return select_mean(contiguous(x), krum_order(dist, f)[:m])


KERNELS = (
    Kernel("torch", multi_krum_reference),
    Kernel("native", _multi_krum_native, needs="cpp"),
    Kernel("triton", _multi_krum_triton),
)


def multi_krum_select(
    x: torch.Tensor, f: int, m: int | None = None, *, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """The rows Multi-Krum averages, best score first: int64 ``[m]`` (see :func:`multi_krum`)."""
    x, f, m = _validate(x, f, m)
    return krum_order(checked(sq_dists(x, backend), x, "multi_krum", check), f)[:m]


def multi_krum(
    x: torch.Tensor,
    *,
    f: int,
    m: int | None = None,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Multi-Krum of ``x`` ``[n, d]`` -> float32 ``[d]``: the mean of the ``m`` best Krum scores.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16 (averaged in float32).
    f : the number of Byzantine clients to tolerate; needs ``n > 2f + 2``.
    m : how many updates to average, ``1 <= m <= n``; ``n - f`` if None.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates; costs no pass of its own (see
        :func:`._distances.checked`).
    """
    x, f, m = _validate(x, f, m)
    return dispatch("multi_krum", KERNELS, x, backend, f, m, check=check)
