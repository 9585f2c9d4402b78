"""Replies aggregated where their bytes lie: no batch for the weighted mean or Krum's distances.

Each client's float32 arrays are views over its reply's bytes (:func:`~.flower_npy.npy_view`).
The extension's ``weighted_sum_rows`` and ``gram_centered_rows`` (``csrc/mean.cpp``,
``csrc/_distances.cpp``) read them in place, one segment per array, so a round reads each
byte once and writes no ``[n, d]`` matrix:

- :func:`rows_weighted_sum`: Flower's FedAvg arithmetic (``acc = r_0 * s_0; acc += r_i * s_i``
  in float32, each product rounded before its add), bit for bit as numpy computes it;
- :func:`rows_sq_dists`: the squared distances :meth:`~.flower_arrays.Stack.sq_dists` gives,
  from the same pivot (the medoid of the same strided columns), the centred Gram summed per
  array instead of per block of the stacked matrix (the same float32-block / float64-sum
  numerics, blocks cut at array ends).

Both return None where they do not apply (no extension, another backend forced, a float32
array that is not native float32, one client) and :func:`rows_sq_dists` also where its Gram
is not finite or underflows; the caller then stacks the replies, which screens them for NaN
and infinity and names the ones it leaves out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType

import numpy as np
import torch

from ..backends import native, requested
from ..errors import BackendUnavailable
from ..rules._common import RECHECK_BELOW
from ..rules._distances import gram_to_sq_dists, pivot_of_sample, pivot_stride
from ..rules._distances import sq_dists_reference as sq_dists_float64
from .flower_arrays import Slot, Stack
from .flower_npy import StackPool

_FLOAT32 = np.dtype(np.float32)

# From this many values (n * d32) on, the weighted sum lets a helper thread take blocks too.
# Helper over one thread, median of 60 at n=16 on the 2-core EPYC with two other processes busy:
# 0.46 at 2^14, 0.54 at 2^18, 0.84 at 2^21 (starting a thread costs ~50 us), 0.99 at 2^22,
# 1.02 at 2^23; idle at 2^23 (n=32, d=262,144) it ran 1.2-1.5 ms against 1.8-2.1 ms.
ROWS_PARALLEL = 1 << 22


def rows_library(backend: str | None) -> ModuleType | None:
    """The extension, if the rows kernels may run: it is built, and no backend other than
    ``native`` is forced (``backend`` or ``BCFL_BACKEND``)."""
    if requested(backend) not in (None, "native"):
        return None
    try:
        return native()
    except BackendUnavailable:
        return None


def _narrow(slots: Sequence[Slot]) -> list[int] | None:
    """Indices of the float32 slots, or None if a narrow slot is not native float32 (float16,
    small integers: the stacked path converts those)."""
    out = []
    for j, s in enumerate(slots):
        if s.wide:
            continue
        if s.dtype != _FLOAT32:
            return None
        out.append(j)
    return out


def _pieces(arrays: Sequence[Sequence[np.ndarray]], idx: Sequence[int]) -> list[np.ndarray]:
    """Client-major pieces ``[client 0 slot idx[0], client 0 slot idx[1], ..., client 1 ...]``."""
    return [client[j] for client in arrays for j in idx]


def rows_weighted_sum(
    arrays: Sequence[Sequence[np.ndarray]],
    slots: Sequence[Slot],
    shares: Sequence[float],
    d32: int,
    backend: str | None = None,
) -> np.ndarray | None:
    """``acc = r_0 * s_0; acc += r_i * s_i`` over the clients' float32 slots (numpy's float32
    arithmetic), as one float32 vector ``[d32]``; None without the extension. Every array
    must match its slot's shape and dtype (the caller checked)."""
    lib = rows_library(backend)
    idx = _narrow(slots)
    if lib is None or idx is None or not idx or not arrays:
        return None
    out = torch.empty(d32, dtype=torch.float32)
    widths = [slots[j].size for j in idx]
    s = torch.tensor([float(np.float32(v)) for v in shares], dtype=torch.float32)
    parallel = len(arrays) * d32 >= ROWS_PARALLEL
    lib.weighted_sum_rows(_pieces(arrays, idx), widths, s, out, parallel)
    return out.numpy()


def _pivot(arrays: Sequence[Sequence[np.ndarray]], slots: Sequence[Slot], idx: list[int]) -> int:
    """:func:`~bcfl_engine.rules._distances.pivot` of the stacked float32 matrix, from the
    same strided columns read out of each client's arrays."""
    d32 = sum(slots[j].size for j in idx)
    step = pivot_stride(d32)
    cols = []
    for j in idx:  # the sampled columns 0, step, 2 step, ... that fall in slot j
        s = slots[j]
        first = -s.offset % step
        if first < s.size:
            cols.append((j, first))
    sample = np.concatenate(
        [np.stack([c[j].reshape(-1)[first::step] for c in arrays]) for j, first in cols], axis=1
    )
    return pivot_of_sample(torch.from_numpy(sample).double())


def rows_sq_dists(
    arrays: Sequence[Sequence[np.ndarray]], slots: Sequence[Slot], backend: str | None = None
) -> torch.Tensor | None:
    """Squared distances between the clients' whole models, float64 ``[n, n]``, as
    :meth:`~.flower_arrays.Stack.sq_dists` gives them; None where the rows path does not apply
    or its result is not finite (see the module docstring)."""
    lib = rows_library(backend)
    idx = _narrow(slots)
    n = len(arrays)
    if lib is None or idx is None or n < 2:
        return None
    dist = torch.zeros(n, n, dtype=torch.float64)
    if idx and sum(slots[j].size for j in idx):
        gram = torch.empty(n, n, dtype=torch.float64)
        widths = [slots[j].size for j in idx]
        lib.gram_centered_rows(_pieces(arrays, idx), widths, _pivot(arrays, slots, idx), gram)
        # Non-finite: NaN or infinity in some row (or a float32 overflow); all within ~1e-10 of
        # the pivot: float32 underflow. The stacked path sorts out both.
        if not bool(torch.isfinite(gram).all()) or float(gram.diagonal().max()) < RECHECK_BELOW:
            return None
        dist += gram_to_sq_dists(gram)
    wide = [j for j, s in enumerate(slots) if s.wide]
    if wide:
        x64 = np.stack(
            [
                np.concatenate([np.asarray(c[j], np.float64).reshape(-1) for j in wide])
                for c in arrays
            ]
        )
        d64 = sq_dists_float64(torch.from_numpy(x64))
        if not bool(torch.isfinite(d64).all()):
            return None
        dist += d64
    return dist


@dataclass
class Unstacked:
    """Clients' arrays left where they lie, with their squared distances read off them
    (:func:`rows_sq_dists`): what a selection rule needs before it knows whom it keeps. Has
    the part of :class:`~.flower_arrays.Stack` a selection uses: ``len``, :meth:`sq_dists`
    and :meth:`take` (which stacks only the rows taken, into ``pool`` if given)."""

    arrays: Sequence[Sequence[np.ndarray]]
    dist: torch.Tensor
    pool: StackPool | None = None

    def __len__(self) -> int:
        return len(self.arrays)

    def sq_dists(self, backend: str | None = None) -> torch.Tensor:
        return self.dist

    def take(self, rows: Sequence[int]) -> Stack:
        return Stack.of([self.arrays[i] for i in rows], self.pool)
