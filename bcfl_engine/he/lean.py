"""Lean CKKS payloads: a lowest-level ciphertext switched from ``q_0`` to ``2^b``, and its sum.

A client's lowest-level ciphertext ``(c_0, c_1)`` (one prime ``q_0``) satisfies ``c_0 + c_1 s =
Delta m + e (mod q_0)``. Switching the modulus (Brakerski, Gentry, Vaikuntanathan, ITCS 2012;
for CKKS, Cheon et al., ASIACRYPT 2017) to ``2^b`` in coefficient form is public
post-processing (no key, no security lost) and gives ``c'_0 + c'_1 s = Delta' m + e' (mod 2^b)``
with ``Delta' = Delta 2^b / q_0`` and a rounding noise of ``sqrt(1/12 + N Var(s) / 12)`` per
coefficient (~21.3 at ``N = 8192``). Four exact integer maps, each defined here once, over
residues in coefficient form ``[C, 2, N]`` (``[:, 0]`` is ``c_0``, ``[:, 1]`` is ``c_1``):

- **switch**: ``c' = round(2^b c / q_0) mod 2^b`` for ``c`` in ``[0, q_0)``. ``q_0`` is an odd
  prime, so ``2^b c / q_0`` is never a half-integer for ``0 < c < q_0``: the rounding is exact
  and has no ties to break;
- **c0 rounding**: ``c'_0 -> round_half_even(c'_0 / 2^k) mod 2^(b - k)``, the ``k`` low bits of
  ``c'_0`` rounded away (not ``c'_1``'s: its rounding would be multiplied by ``s``). Ties go to
  even: rounding them up biases every coefficient of a sum of ``n`` by ``n / 2`` (measured: 3
  bits lost on the mean of 1,000). The wire holds ``t``; the server reads ``t 2^k``;
- **sum**: ``out = acc + sum_i w_i x_i mod 2^b``: uint64 arithmetic wraps modulo ``2^64``, a
  multiple of ``2^b``, so one mask at the end is exact. No NTT, no prime;
- **lift**: ``round(q_0 c / 2^b) mod q_0``: back to ``q_0`` (any representative of ``c`` mod
  ``2^b`` lifts to the same class mod ``q_0``), where SEAL decrypts it after a forward NTT.

:func:`switch` and :func:`lean_sum` run on the torch reference, the C++ extension or Triton
(``backend=``), bit for bit equal to the pure-Python oracles :func:`switch_reference` and
:func:`sum_reference` (``tests/test_lean_kernels.py``). :func:`lift` is numpy (exact 128-bit
products from 64-bit halves); it runs once per aggregate. ``b`` goes up to 59 (``2^b < q_0 <
2^60``): a multiparty lean preset ("lean16", ``b = 58``) needs ``b`` close to ``q_0``'s bits for
its smudging margin; past 50 bits the C++ kernels switch with a 128-bit division and unpack
with a ninth byte, and Triton is refused (``tests/test_multiparty_presets.py``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from ..backends import Kernel, _load_native, dispatch, native
from ..errors import BackendUnavailable, InvalidArgument
from .ntt import mulhi

MAX_BITS = 59  # 2^b < q_0 < 2^60
# The Triton kernels hold up to here (the switch's float64 estimate is within 1 of the exact
# quotient); a wider b (a multiparty lean preset, whose smudging margin needs b close to q_0's
# bits) runs in C++ (128-bit division and products, 9-byte reads) or on the torch reference.
FAST_MAX_BITS = 50


def check_bits(q0: int, b: int, k: int) -> None:
    """InvalidArgument unless ``q_0`` is an odd modulus below ``2^60`` above ``2^b``, ``1 <= b <=
    MAX_BITS`` and ``0 <= k < b``."""
    if not (isinstance(b, int) and 1 <= b <= MAX_BITS and isinstance(k, int) and 0 <= k < b):
        raise InvalidArgument(f"lean: need 1 <= b <= {MAX_BITS} and 0 <= k < b; got b={b}, k={k}")
    if not (2**b < q0 < 2**60 and q0 % 2):
        raise InvalidArgument(f"lean: q_0 must be odd, in (2^b, 2^60); got {q0} for b={b}")


# ---------------------------------------------------------------- oracles (Python integers)


def switch_reference(x: np.ndarray, q0: int, b: int, k: int) -> np.ndarray:
    """The switch and the c0 rounding by their definitions, in Python integers: ``x`` ``[..., 2,
    N]`` residues below ``q_0`` -> uint64 ``[..., 2, N]`` (``c_0`` as ``t``, ``c_1`` as ``c'``)."""
    x = np.asarray(x).astype(np.uint64)
    out = np.empty(x.shape, dtype=np.uint64)
    flat_in, flat_out = x.reshape(-1, 2, x.shape[-1]), out.reshape(-1, 2, x.shape[-1])
    for r in range(flat_in.shape[0]):
        for p in range(2):
            vals = []
            for c in flat_in[r, p].tolist():
                y = ((c << (b + 1)) + q0) // (2 * q0) % (1 << b)  # round(2^b c / q0), no ties
                if p == 0 and k:
                    t, rem, half = y >> k, y & ((1 << k) - 1), 1 << (k - 1)
                    y = (t + (rem > half or (rem == half and t & 1))) % (1 << (b - k))
                vals.append(y)
            flat_out[r, p] = np.array(vals, dtype=np.uint64)
    return out


def sum_reference(
    x: np.ndarray, b: int, weights: Sequence[int] | None = None, acc: np.ndarray | None = None
) -> np.ndarray:
    """``acc + sum_i w_i x_i mod 2^b`` in Python integers over ``x`` ``[n, ...]`` -> uint64."""
    xs = np.asarray(x).astype(np.uint64).astype(object)
    w = [1] * xs.shape[0] if weights is None else [int(v) for v in weights]
    total = np.zeros(xs.shape[1:], dtype=object) if acc is None else acc.astype(object)
    for i in range(xs.shape[0]):
        total = total + xs[i] * w[i]
    return (total % (1 << b)).astype(np.uint64)


def lift_reference(x: np.ndarray, q0: int, b: int) -> np.ndarray:
    """``round(q_0 c / 2^b) mod q_0`` in Python integers."""
    flat = [((int(c) * q0 * 2 + (1 << b)) >> (b + 1)) % q0 for c in np.asarray(x).ravel()]
    return np.array(flat, dtype=np.uint64).reshape(np.shape(x))


# ---------------------------------------------------------------- switch


def _round_c0(y: torch.Tensor, b: int, k: int) -> torch.Tensor:
    if k == 0:
        return y
    c0 = y[..., 0, :]
    t, rem, half = c0 >> k, c0 & ((1 << k) - 1), 1 << (k - 1)
    up = (rem > half) | ((rem == half) & (t & 1).bool())
    y[..., 0, :] = (t + up.long()) & ((1 << (b - k)) - 1)
    return y


def _switch_torch(x: torch.Tensor, q0: int, b: int, k: int) -> torch.Tensor:
    """Long division by ``q_0``, three bits at a time: every intermediate below ``2^63``."""
    r, quo, left = x.clone(), torch.zeros_like(x), b
    while left:
        s = min(3, left)
        r = r << s  # r < q0 < 2^60
        d = torch.div(r, q0, rounding_mode="floor")
        quo = (quo << s) + d
        r = r - d * q0
        left -= s
    quo = (quo + (2 * r > q0).long()) & ((1 << b) - 1)  # q0 odd: 2 r == q0 never happens
    return _round_c0(quo, b, k)


def _switch_native(x: torch.Tensor, q0: int, b: int, k: int) -> torch.Tensor:
    out = torch.empty_like(x)
    native().lean_switch(x, q0, b, k, out)
    return out


def _switch_triton(x: torch.Tensor, q0: int, b: int, k: int) -> torch.Tensor:
    from ..kernels.lean import lean_switch as launch

    return launch(x, q0, b, k)


def _switch_triton_limits(x: torch.Tensor) -> str | None:
    n = x.shape[-1]
    return None if n > 0 and n & (n - 1) == 0 else f"N={n}: the Triton switch needs a power of two"


SWITCH_KERNELS = (
    Kernel("torch", _switch_torch),
    Kernel("native", _switch_native, needs="cpp"),
    Kernel("triton", _switch_triton, limits=_switch_triton_limits),
)


def switch(x: torch.Tensor, q0: int, b: int, k: int, *, backend: str | None = None) -> torch.Tensor:
    """Switch ``x`` ``[C, 2, N]`` int64 (coefficients below ``q_0``) to ``2^b`` and round the
    ``k`` low bits of ``c_0`` away -> int64 ``[C, 2, N]``: ``t`` below ``2^(b - k)`` in ``[:, 0]``,
    ``c'_1`` below ``2^b`` in ``[:, 1]``.

    ``backend``: "torch", "native", "triton" or None (automatic).
    """
    check_bits(q0, b, k)
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() != 3 or x.shape[1] != 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgument(f"lean.switch: x must be an int64 tensor [C, 2, N]; got {got}")
    if x.numel() and (int(x.min()) < 0 or int(x.max()) >= q0):
        raise InvalidArgument("lean.switch: coefficients must lie in [0, q_0)")
    chosen = _wide(b, backend, x)
    return dispatch("lean_switch", SWITCH_KERNELS, x.contiguous(), chosen, q0, b, k)


# ---------------------------------------------------------------- sum


def _sum_torch(
    x: torch.Tensor, b: int, weights: Sequence[int] | None, acc: torch.Tensor | None
) -> torch.Tensor:
    """Exact without overflow: weights in limbs of ``63 - b`` bits, clients in chunks whose sum
    stays below ``2^63``."""
    mask = (1 << b) - 1
    out = (
        torch.zeros(x.shape[1:], dtype=torch.int64, device=x.device) if acc is None else acc & mask
    )
    limb = 63 - b
    chunk = 1 << (62 - b)
    for s in range(0, x.shape[0], chunk):
        xs = x[s : s + chunk]
        if weights is None:
            out = (out + (xs.sum(0) & mask)) & mask
            continue
        w = [int(v) & mask for v in weights[s : s + chunk]]
        for j in range(0, b, limb):
            wj = torch.tensor([(v >> j) & ((1 << limb) - 1) for v in w], device=x.device)
            term = (xs * wj.view(-1, *([1] * (xs.dim() - 1)))) & ((1 << (b - j)) - 1)
            out = (out + ((term.sum(0) & ((1 << (b - j)) - 1)) << j)) & mask
    return out


def _sum_native(
    x: torch.Tensor, b: int, weights: Sequence[int] | None, acc: torch.Tensor | None
) -> torch.Tensor:
    out = torch.empty(x.shape[1:], dtype=torch.int64)
    w = None if weights is None else weights_u64(weights, b)
    flat_acc = None if acc is None else acc.contiguous().reshape(-1)
    native().lean_sum(x.reshape(x.shape[0], -1), b, w, flat_acc, out.view(-1))
    return out


def _sum_triton(
    x: torch.Tensor, b: int, weights: Sequence[int] | None, acc: torch.Tensor | None
) -> torch.Tensor:
    from ..kernels.lean import lean_sum as launch

    w = None if weights is None else weights_u64(weights, b).to(x.device)
    return launch(x, b, w, None if acc is None else acc.contiguous())


def weights_u64(weights: Sequence[int], b: int) -> torch.Tensor:
    """Weights mod ``2^b`` as int64 (what the sum multiplies by: the same class mod ``2^b``)."""
    return torch.tensor([int(w) & ((1 << b) - 1) for w in weights], dtype=torch.int64)


SUM_KERNELS = (
    Kernel("torch", _sum_torch),
    Kernel("native", _sum_native, needs="cpp"),
    Kernel("triton", _sum_triton),
)


def lean_sum(
    x: torch.Tensor,
    b: int,
    weights: Sequence[int] | None = None,
    *,
    acc: torch.Tensor | None = None,
    backend: str | None = None,
) -> torch.Tensor:
    """``acc + sum_i w_i x_i mod 2^b`` over ``x`` ``[n, ...]`` int64 (values below ``2^b``) ->
    int64 ``x.shape[1:]``.

    Parameters
    ----------
    b : the modulus' bits (``1 <= b <= MAX_BITS``)
    weights : ``n`` non-negative integers, or None for a plain sum
    acc : a partial sum of shape ``x.shape[1:]`` (streaming over blocks of clients)
    backend : "torch", "native", "triton" or None (automatic)
    """
    if not isinstance(b, int) or not 1 <= b <= MAX_BITS:
        raise InvalidArgument(f"lean_sum: need 1 <= b <= {MAX_BITS}; got {b!r}")
    if not isinstance(x, torch.Tensor) or x.dtype != torch.int64 or x.dim() < 2:
        got = f"{x.dtype} {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise InvalidArgument(f"lean_sum: x must be an int64 tensor [n, ...]; got {got}")
    if weights is not None:
        weights = [int(w) for w in weights]
        if len(weights) != x.shape[0] or any(w < 0 for w in weights):
            raise InvalidArgument(
                f"lean_sum: weights must be {x.shape[0]} non-negative integers; got {weights[:8]}"
            )
    if acc is not None and (acc.dtype != torch.int64 or acc.shape != x.shape[1:]):
        raise InvalidArgument(
            f"lean_sum: acc must be int64 {tuple(x.shape[1:])}; got {acc.dtype} {tuple(acc.shape)}"
        )
    chosen = _wide(b, backend, x)
    return dispatch("lean_sum", SUM_KERNELS, x.contiguous(), chosen, b, weights, acc)


def _wide(b: int, backend: str | None, x: torch.Tensor) -> str | None:
    """``backend`` up to ``FAST_MAX_BITS``; past it, native (C++, on a CPU tensor, where built)
    or torch when None, BackendUnavailable for Triton."""
    wide = ("torch", "native")
    if b <= FAST_MAX_BITS or backend in wide:
        return backend
    if backend is None:
        cpu = x.device.type == "cpu" and _load_native()[0] is not None
        return "native" if cpu else "torch"
    raise BackendUnavailable(
        f"lean: the {backend} kernel holds b <= {FAST_MAX_BITS}; b={b} runs on {' or '.join(wide)}"
    )


# ---------------------------------------------------------------- lift


def lift(x: np.ndarray, q0: int, b: int, *, backend: str | None = None) -> np.ndarray:
    """``round(q_0 c / 2^b) mod q_0`` of ``x`` (values below ``2^b``) -> uint64, same shape.

    ``backend``: "native" (C++, 128-bit products), "numpy" (the 128-bit product ``c q_0`` as
    ``mulhi`` and the wrapping low word, plus ``2^(b-1)`` with its carry, shifted right by
    ``b``) or None (native where built). Both exact, equal to :func:`lift_reference`.
    """
    check_bits(q0, b, 0)
    c = np.ascontiguousarray(np.asarray(x)).view(np.uint64)
    if backend not in (None, "native", "numpy"):
        raise InvalidArgument(f"lift: backend must be 'native', 'numpy' or None; got {backend!r}")
    if backend == "native" or (backend is None and _load_native()[0] is not None):
        out = np.empty(c.shape, dtype=np.uint64)
        flat = torch.from_numpy(c.reshape(-1).view(np.int64))
        native().lean_lift(flat, q0, b, torch.from_numpy(out.reshape(-1).view(np.int64)))
        return out
    q = np.uint64(q0)
    lo = c * q  # wraps mod 2^64 (numpy's unsigned arithmetic is modular)
    hi = mulhi(c, np.full(c.shape, q, dtype=np.uint64))
    half = np.uint64(1 << (b - 1))
    lo2 = lo + half
    hi = hi + (lo2 < lo).astype(np.uint64)
    y = (hi << np.uint64(64 - b)) | (lo2 >> np.uint64(b))
    return np.where(y >= q, y - q, y)
