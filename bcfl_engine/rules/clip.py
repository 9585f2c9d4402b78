"""Norm clipping of each update (pre-aggregation).

``x_i <- x_i * min(1, max_norm / ||x_i||)`` for ``[n_clients, dim]`` updates: no client moves
the aggregate by more than ``max_norm / n`` through its norm alone. The standard bounded-
sensitivity step of differentially private FL (Abadi et al., "Deep Learning with Differential
Privacy", CCS 2016; McMahan et al., "Learning Differentially Private Recurrent Language
Models", ICLR 2018) and a common pre-step of robust aggregation (Karimireddy, He, Jaggi,
"Learning from History for Byzantine Robust Optimization", ICML 2021, clip against a center;
here the center is 0). Rows already within the bound come out unchanged, bit for bit.
"""

from __future__ import annotations

import torch

from ..backends import Kernel, dispatch, native
from ..errors import InvalidArgument
from ._common import DTYPE_CODE, check_finite, check_positive, check_updates, contiguous


def clip_reference(x: torch.Tensor, *, max_norm: float, inplace: bool = False) -> torch.Tensor:
    """Pure-torch norm clipping of the rows of ``x`` ``[n, d]`` -> float32 ``[n, d]``."""
    xf = x.float()
    norms = torch.linalg.vector_norm(xf, dim=1).double()
    scale = torch.where(norms > max_norm, max_norm / norms, 1.0).float()
    return xf.mul_(scale[:, None]) if inplace else xf * scale[:, None]


def _clip_native(x: torch.Tensor, *, max_norm: float, inplace: bool = False) -> torch.Tensor:
    x = contiguous(x)
    n, d = x.shape
    out = x if inplace else torch.empty((n, d), dtype=torch.float32)
    native().clip_rows(DTYPE_CODE[x.dtype], x.data_ptr(), n, d, float(max_norm), out.data_ptr(), 0)
    return out


def _clip_triton(x: torch.Tensor, *, max_norm: float, inplace: bool = False) -> torch.Tensor:
    from ..kernels.clip import clip_rows

    x = contiguous(x)
    return clip_rows(x, float(max_norm), out=x if inplace else None)


KERNELS = (
    Kernel("torch", clip_reference),
    Kernel("native", _clip_native, needs="cpp"),
    Kernel("triton", _clip_triton),
)


def clip(
    x: torch.Tensor,
    *,
    max_norm: float,
    inplace: bool = False,
    backend: str | None = None,
    check: bool = True,
) -> torch.Tensor:
    """Scale each row of ``x`` ``[n, d]`` to L2 norm at most ``max_norm`` -> float32 ``[n, d]``.

    Parameters
    ----------
    max_norm : the bound, a finite number > 0. A row of norm ``<= max_norm`` is unchanged;
        a longer one is scaled by ``max_norm / ||x_i||``.
    inplace : scale the rows over the bound in ``x`` itself and return ``x`` (a contiguous
        float32 tensor): no ``[n, d]`` output to allocate, and a row within the bound is only
        read. Not for a batch whose rows must stay as received (an audited round).
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates (an O(n d) scan; off when the batch was validated).

    Storage may be float32, float16 or bfloat16; the output is float32. Norms accumulate in
    float64 in the fast paths (float32 partial sums of at most 4096 terms).
    """
    x = check_updates(x, "clip")
    max_norm = check_positive(max_norm, "max_norm", "clip")
    if inplace and (x.dtype != torch.float32 or not x.is_contiguous()):
        raise InvalidArgument(
            f"clip: inplace needs a contiguous float32 tensor; got {x.dtype}"
            + ("" if x.is_contiguous() else ", not contiguous")
        )
    if check:
        check_finite(x, "clip")
    return dispatch("clip", KERNELS, x, backend, max_norm=max_norm, inplace=inplace)
