"""Bulyan: Krum selection, then a trimmed average around the coordinate-wise median.

El Mhamdi, Guerraoui and Rouault, "The Hidden Vulnerability of Distributed Learning in
Byzantium", ICML 2018. Over ``[n_clients, dim]`` updates:

1. select ``theta = n - 2f`` updates by iterated Krum: each step takes the Krum winner among the
   updates not yet selected, its scores recomputed over the ``r`` remaining ones with
   ``k_r = r - f - 2`` neighbours (clamped to ``[1, r - 1]``: the last steps leave ``r = 2f + 1``,
   fewer than Krum's own ``r > 2f + 2``);
2. per coordinate, average the ``beta = theta - 2f`` selected values closest to their median
   (the mean of the two middle values when ``theta`` is even; a tie in distance goes to the
   lower value).

Needs ``n >= 4f + 3`` (the paper's condition; it leaves ``beta = n - 4f >= 3`` values per
coordinate).
"""

from __future__ import annotations

import torch

from ..backends import Kernel, choose, dispatch, native
from ._common import check_rule_input, contiguous
from ._distances import (
    checked,
    iterated_krum,
    sq_dists,
    sq_dists_native,
    sq_dists_reference,
    sq_dists_triton,
)
from .median import finite_columns

# Column block of the reference's coordinate stage: [theta, 16384] float64 temporaries.
REFERENCE_BLOCK = 1 << 14


def _validate(x: object, f: object) -> tuple[torch.Tensor, int]:
    # Non-finite input is rejected from the distances (:func:`._distances.checked`).
    return check_rule_input(x, f, "bulyan", check=False)


def bulyan_select_reference(x: torch.Tensor, f: int) -> torch.Tensor:
    """The ``theta = n - 2f`` rows iterated Krum selects, in order (int64 ``[theta]``), from
    float64 distances."""
    return iterated_krum(sq_dists_reference(x), f, x.shape[0] - 2 * f)


def bulyan_coordinates_reference(x: torch.Tensor, idx: torch.Tensor, beta: int) -> torch.Tensor:
    """Per column, the mean of the ``beta`` values of rows ``idx`` closest to their median."""
    theta = idx.numel()
    out = torch.empty(x.shape[1], dtype=torch.float32, device=x.device)
    for j0 in range(0, x.shape[1], REFERENCE_BLOCK):
        s = x[idx, j0 : j0 + REFERENCE_BLOCK].double().sort(dim=0).values
        med = (s[(theta - 1) // 2] + s[theta // 2]) / 2
        # Stable: equal distances keep sorted order, so a tie goes to the lower value.
        near = torch.sort((s - med).abs(), dim=0, stable=True).indices[:beta]
        out[j0 : j0 + REFERENCE_BLOCK] = s.gather(0, near).mean(dim=0).float()
    return out


def bulyan_reference(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    """Pure-torch Bulyan of ``x`` ``[n, d]``: float32 ``[d]``."""
    dist = checked(sq_dists_reference(x), x, "bulyan", check)
    idx = iterated_krum(dist, f, x.shape[0] - 2 * f).to(x.device)
    return bulyan_coordinates_reference(x, idx, x.shape[0] - 4 * f)


def _select_native(dist: torch.Tensor, f: int, theta: int) -> torch.Tensor:
    """:func:`iterated_krum` in C++ (``csrc/bulyan.cpp``): running window sums, O(n) a step
    instead of O(n^2); the same rows in the same order."""
    dist = dist.to(torch.float64).contiguous()
    chosen = torch.empty(theta, dtype=torch.int64)
    native().bulyan_select(dist, f, chosen)
    return chosen


def _bulyan_native(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    x = contiguous(x)
    n, d = x.shape
    idx = _select_native(checked(sq_dists_native(x), x, "bulyan", check), f, n - 2 * f)
    out = torch.empty(d, dtype=torch.float32)
    native().bulyan_coordinates(x, idx, n - 4 * f, out)
    return out


def _bulyan_triton(x: torch.Tensor, f: int, check: bool = False) -> torch.Tensor:
    from ..kernels.bulyan import bulyan_coordinates

    n = x.shape[0]
    idx = iterated_krum(checked(sq_dists_triton(x), x, "bulyan", check), f, n - 2 * f)
    out = bulyan_coordinates(contiguous(x), idx, n - 4 * f)
    # Its float32 sums overflow near 3e38: those columns from the reference (float64).
    return finite_columns(out, x, lambda xc: bulyan_coordinates_reference(xc, idx, n - 4 * f))


def _triton_limits(x: torch.Tensor) -> str | None:
    from ..kernels.bulyan import MAX_ROWS

    if x.shape[0] > MAX_ROWS:
        return (
            "the Triton kernel ranks the selected values of a column in registers: "
            f"n <= {MAX_ROWS}; got n={x.shape[0]}"
        )
    return None


KERNELS = (
    Kernel("torch", bulyan_reference),
    Kernel("native", _bulyan_native, needs="cpp"),
    Kernel("triton", _bulyan_triton, limits=_triton_limits),
)


def bulyan_select(
    x: torch.Tensor, f: int, *, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """The ``theta = n - 2f`` rows Bulyan's first stage selects, in order: int64 ``[theta]``."""
    x, f = _validate(x, f)
    dist = checked(sq_dists(x, backend), x, "bulyan", check)
    theta = x.shape[0] - 2 * f
    if choose("bulyan", KERNELS, x, backend).backend == "native":
        return _select_native(dist, f, theta)
    return iterated_krum(dist, f, theta)


def bulyan(
    x: torch.Tensor, *, f: int, backend: str | None = None, check: bool = True
) -> torch.Tensor:
    """Bulyan of ``x`` ``[n, d]`` -> float32 ``[d]``.

    Parameters
    ----------
    x : ``[n_clients, dim]`` updates, float32, float16 or bfloat16.
    f : the number of Byzantine clients to tolerate; Bulyan needs ``n >= 4f + 3``.
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates; costs no pass of its own (see
        :func:`._distances.checked`).
    """
    x, f = _validate(x, f)
    return dispatch("bulyan", KERNELS, x, backend, f, check=check)
