"""The backends of the clipped mean (:func:`bcfl_engine.dp.clipped_mean`): torch, native (C++,
``csrc/dp.cpp``) and Triton, each ``(x [n, d], clipping_norm, m) -> float32 [d]``; the native one
also adds a draw's noise in its final write (:func:`bcfl_engine.dp.private_mean`) and takes row
norms already known (:attr:`bcfl_engine.updates.UpdateBatch.norms`)."""

from __future__ import annotations

import torch

from .backends import Kernel, native
from .rules._common import FLT_MIN, contiguous, exact_sq_norms, row_sq_norms64


def _coefficients(norms: torch.Tensor, clipping_norm: float, m: int) -> torch.Tensor:
    """float64 ``min(1, C / ||x_i||) / m`` per row; ``1 / m`` for a non-finite norm (the row's
    NaN or inf then reaches the result, for the caller to report)."""
    over = (norms > clipping_norm) & torch.isfinite(norms)
    scale = torch.where(over, clipping_norm / norms, torch.ones_like(norms))
    return scale / m


def _cm_torch(x: torch.Tensor, clipping_norm: float, m: int) -> torch.Tensor:
    # The clip as the coefficients of one matrix-vector product: float64 norms over column
    # blocks (no [n, d] float64 copy), then coef @ x; no clipped copy of x is written.
    xf = x.float()
    coef = _coefficients(row_sq_norms64(xf).sqrt(), clipping_norm, m)
    return _combine(xf, coef)


def _combine(x: torch.Tensor, coef: torch.Tensor) -> torch.Tensor:
    """``sum_i coef_i x_i`` in float32, rows whose coefficient is below float32's normal range
    (a subnormal float32 coefficient keeps few bits) in float64, each product rounded once."""
    tiny = coef < FLT_MIN
    out = torch.where(tiny, 0.0, coef).float().to(x.device) @ x
    for i in tiny.nonzero().reshape(-1).tolist():
        out += (x[i].double() * float(coef[i])).float()
    return out


def cm_native(
    x: torch.Tensor,
    clipping_norm: float,
    m: int,
    noise: tuple[bytes, bytes] | None = None,
    std: float = 0.0,
    norms: torch.Tensor | None = None,
    normals: torch.Tensor | None = None,
) -> torch.Tensor:
    # csrc/dp.cpp: the norms (one read of x, skipped when ``norms``, float64 [n], are given:
    # taken at intake), then the weighted mean's column blocks with the clip's coefficients;
    # ``noise``, a draw's (key, message), adds the noise in the final write, its words made
    # block by block in the kernel; or ``normals``, that draw's normals made beforehand.
    x = contiguous(x)
    n, d = x.shape
    mod = native()
    w = torch.full((n,), 1.0 / m, dtype=torch.float64)
    out = torch.empty(d, dtype=torch.float32)
    known = norms is not None
    held = norms if norms is not None else torch.empty(n, dtype=torch.float64)
    key, message = (None, None) if noise is None else noise
    mod.clipped_mean(
        x, w, float(clipping_norm), held, known, out, key, message, float(std), normals
    )
    return out


def _cm_triton(x: torch.Tensor, clipping_norm: float, m: int) -> torch.Tensor:
    # Two kernels, two reads of x: the clip rule's norms, then the mean with the clip folded
    # into the weights. One kernel would need every row's norm before the first column's sum,
    # a grid-wide synchronization Triton does not offer.
    from .kernels.clip import row_sq_norms
    from .kernels.mean import weighted_mean

    x = contiguous(x)
    coef = _coefficients(exact_sq_norms(x, row_sq_norms(x)).sqrt().cpu(), clipping_norm, m)
    tiny = coef < FLT_MIN  # as _combine: such rows in float64
    out = weighted_mean(x, torch.where(tiny, 0.0, coef).float().to(x.device))
    for i in tiny.nonzero().reshape(-1).tolist():
        out += (x[i].double() * float(coef[i])).float()
    return out


KERNELS = (
    Kernel("torch", _cm_torch),
    Kernel("native", cm_native, needs="cpp"),
    Kernel("triton", _cm_triton),
)
