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
from ._common import (
    FLT_MIN,
    check_finite,
    check_positive,
    check_updates,
    check_writable,
    contiguous,
    exact_sq_norms,
    raise_nonfinite,
    row_sq_norms64,
)


def _scales(norms: torch.Tensor, max_norm: float) -> torch.Tensor:
    """float64 ``min(1, max_norm / norm)`` per row; 1 for a non-finite norm (a row holding NaN
    or inf is left as it is, for :func:`clip` to report)."""
    over = (norms > max_norm) & torch.isfinite(norms)
    return torch.where(over, max_norm / norms, torch.ones_like(norms))


def _scale_rows(xf: torch.Tensor, scale: torch.Tensor, inplace: bool) -> torch.Tensor:
    """``xf * scale[:, None]`` (float32 ``xf``, float64 ``scale``): a float32 product where the
    scale is a normal float32, else in float64 rounded once (a subnormal float32 scale of a
    row near 3e38 would keep 1 to 23 bits)."""
    tiny = scale < FLT_MIN
    s32 = torch.where(tiny, torch.ones_like(scale), scale).float()[:, None]
    out = xf.mul_(s32) if inplace else xf * s32
    if bool(tiny.any()):
        rows = tiny.nonzero().reshape(-1)
        out[rows] = (xf[rows].double() * scale[rows, None]).float()
    return out


def _clip_torch(
    x: torch.Tensor, *, max_norm: float, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    xf = x.float()
    norms = row_sq_norms64(xf).sqrt()
    return _scale_rows(xf, _scales(norms, max_norm), inplace), norms


def clip_reference(x: torch.Tensor, *, max_norm: float, inplace: bool = False) -> torch.Tensor:
    """Pure-torch norm clipping of the rows of ``x`` ``[n, d]`` -> float32 ``[n, d]``; norms in
    float64 (no overflow or underflow for any finite input)."""
    return _clip_torch(x, max_norm=max_norm, inplace=inplace)[0]


def _clip_native(
    x: torch.Tensor, *, max_norm: float, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    x = contiguous(x)
    n, d = x.shape
    out = x if inplace else torch.empty((n, d), dtype=torch.float32)
    norms = torch.empty(n, dtype=torch.float64)
    native().clip_rows(x, float(max_norm), out, norms)
    return out, norms


def _clip_triton(
    x: torch.Tensor, *, max_norm: float, inplace: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    from ..kernels.clip import row_sq_norms, scale_rows

    x = contiguous(x)
    norms = exact_sq_norms(x, row_sq_norms(x)).sqrt()
    scale = _scales(norms, float(max_norm))
    tiny = scale < FLT_MIN
    out = scale_rows(
        x, torch.where(tiny, torch.ones_like(scale), scale).float(), out=x if inplace else None
    )
    if bool(tiny.any()):  # as in _scale_rows: those rows in float64
        rows = tiny.nonzero().reshape(-1)
        out[rows] = (x[rows].double() * scale[rows, None]).float()
    return out, norms


KERNELS = (
    Kernel("torch", _clip_torch),
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
        float32 tensor in writable memory: a read-only memory map is refused): no ``[n, d]``
        output to allocate, and a row within the bound is only read. Not for a batch whose
        rows must stay as received (an audited round).
    backend : "torch", "native", "triton" or None (automatic).
    check : reject non-finite updates. Without ``inplace`` it costs no pass of its own: a row
        holding NaN or inf has a non-finite norm, which every kernel returns. In place, ``x``
        is scanned first (one more read), so that no row is written when this raises.

    Storage may be float32, float16 or bfloat16; the output is float32. Norms accumulate in
    float64 in every backend: a finite row never gets an infinite or a zero norm (rows near
    3e38, or of 1e-30).
    """
    x = check_updates(x, "clip")
    max_norm = check_positive(max_norm, "max_norm", "clip")
    if inplace:
        if x.dtype != torch.float32 or not x.is_contiguous():
            raise InvalidArgument(
                f"clip: inplace needs a contiguous float32 tensor; got {x.dtype}"
                + ("" if x.is_contiguous() else ", not contiguous")
            )
        check_writable(x, "clip")
        if check:
            check_finite(x, "clip")
    out, norms = dispatch("clip", KERNELS, x, backend, max_norm=max_norm, inplace=inplace)
    bad = ~torch.isfinite(norms)
    if check and bool(bad.any()):
        raise_nonfinite(x, "clip", bad.nonzero().reshape(-1))
    return out
