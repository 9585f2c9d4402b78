"""Clients' lists of arrays (Flower's NDArrays) as matrices the engine aggregates, and back.

A model mixes dtypes: float32 weights, a 0-d int64 ``num_batches_tracked``, sometimes float64
throughout. :class:`Stack` holds ``n`` clients' arrays as two matrices:

- ``x32`` ``[n, d32]`` float32: the arrays float32 holds exactly (float32, float16, int8/16,
  uint8/16, bool). The engine's kernels aggregate it.
- ``x64`` ``[n, d64]`` float64: the wide arrays (float64, int32/64, uint32/64). Numpy
  aggregates it in float64, with Flower's own arithmetic where Flower defines the result, so
  a float64 model comes out of a drop-in bit for bit as out of Flower's strategy.

Coordinate-wise rules run on each matrix; distance-based selections add the two matrices'
squared distances (float64), so a client is chosen on its whole model. :meth:`Stack.unstack`
gives each array back in its shape and dtype; integer arrays are rounded to nearest.

Every function here is free of Flower's types: the Message API and the legacy strategies
share them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .. import rules
from ..aggregate import aggregate
from ..errors import InvalidArgument
from ..rules._distances import iterated_krum, krum_order, krum_scores, sq_dists
from ..rules._distances import sq_dists_reference as sq_dists_float64
from ..rules.bulyan import bulyan_coordinates_reference
from .flower_npy import StackPool

# Rules with a float64 path here; any other rule (or a pre step) sees the whole model in
# float32 and its wide arrays are cast back afterwards.
SPLIT_RULES = frozenset({"mean", "median", "trimmed_mean", "krum", "multi_krum", "bulyan"})
SELECTION_RULES = frozenset({"krum", "multi_krum", "bulyan"})


def is_wide(dtype: np.dtype) -> bool:
    """True for the dtypes float32 does not hold exactly: float64 and 32/64-bit integers."""
    return (dtype.itemsize >= 4 and dtype.kind in "iu") or (
        dtype.itemsize >= 8 and dtype.kind == "f"
    )


@dataclass(frozen=True)
class Slot:
    """Where one array lives: its shape and dtype, its matrix (wide or not) and offset."""

    shape: tuple[int, ...]
    dtype: np.dtype
    wide: bool
    offset: int

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))


def layout(first: Sequence[np.ndarray]) -> tuple[tuple[Slot, ...], int, int]:
    """The slots of one client's arrays, and the lengths ``d32`` and ``d64`` they fill."""
    slots, d32, d64 = [], 0, 0
    for a in first:
        a = np.asarray(a)
        wide = is_wide(a.dtype)
        slots.append(Slot(tuple(a.shape), a.dtype, wide, d64 if wide else d32))
        if wide:
            d64 += slots[-1].size
        else:
            d32 += slots[-1].size
    return tuple(slots), d32, d64


def unstack(
    slots: Sequence[Slot],
    v32: torch.Tensor | np.ndarray,
    v64: np.ndarray,
    fresh: bool = False,
) -> list[np.ndarray]:
    """Aggregated vectors back to arrays of the slots' shapes and dtypes: new arrays, never
    views of ``v32`` or ``v64`` (integer arrays rounded to nearest), unless ``fresh``: the
    caller owns the vectors and hands them over, and arrays of their own dtype stay views."""
    v32 = np.asarray(v32.cpu() if isinstance(v32, torch.Tensor) else v32)
    out = []
    for s in slots:
        piece = (v64 if s.wide else v32)[s.offset : s.offset + s.size]
        if s.dtype.kind in "iub":  # an integer buffer stays an integer: round to nearest
            piece = np.rint(piece)
        out.append(piece.astype(s.dtype, copy=not fresh).reshape(s.shape))
    return out


@dataclass
class Stack:
    """``n`` clients' arrays as a float32 ``x32`` ``[n, d32]`` and a float64 ``x64`` ``[n, d64]``."""

    x32: torch.Tensor
    x64: np.ndarray
    slots: tuple[Slot, ...]

    @classmethod
    def of(cls, arrays: Sequence[Sequence[np.ndarray]], pool: StackPool | None = None) -> Stack:
        """Stack clients' lists of arrays (same shapes and dtype kinds; the first sets them),
        into ``pool``'s reused matrices if given (valid until the pool's next round of the
        same size), else into fresh ones."""
        if not arrays:
            raise InvalidArgument("no client arrays to stack")
        slots, d32, d64 = layout(arrays[0])
        n = len(arrays)
        if pool is not None:
            x32, x64 = pool.get(n, d32, d64)
        else:
            x32, x64 = np.empty((n, d32), np.float32), np.empty((n, d64), np.float64)
        for i, client in enumerate(arrays):
            if len(client) != len(slots):
                raise InvalidArgument(f"client {i}: {len(client)} arrays, expected {len(slots)}")
            for j, (s, a) in enumerate(zip(slots, client, strict=True)):
                a = np.asarray(a)
                if a.shape != s.shape:
                    raise InvalidArgument(f"client {i}, array {j}: shape {a.shape}, not {s.shape}")
                (x64 if s.wide else x32)[i, s.offset : s.offset + s.size] = a.reshape(-1)
        return cls(torch.from_numpy(x32), x64, slots)

    def __len__(self) -> int:
        return int(self.x32.shape[0])

    def take(self, rows: Sequence[int]) -> Stack:
        idx = list(rows)
        return Stack(self.x32[idx], self.x64[idx], self.slots)

    def unstack(self, v32: torch.Tensor | np.ndarray, v64: np.ndarray) -> list[np.ndarray]:
        """Aggregated vectors back to arrays of the clients' shapes and dtypes."""
        return unstack(self.slots, v32, v64)

    def sq_dists(self, backend: str | None = None) -> torch.Tensor:
        """Squared distances between clients' whole models: float64 ``[n, n]`` (the engine's
        distance kernels on ``x32``, exact float64 sums on ``x64``)."""
        n = len(self)
        dist = torch.zeros(n, n, dtype=torch.float64)
        if self.x32.shape[1]:
            dist += sq_dists(self.x32, backend)
        if self.x64.shape[1]:
            dist += sq_dists_float64(torch.from_numpy(self.x64))
        return dist


# ---- the float64 side (numpy) -----------------------------------------------------------------


def flower_weighted_mean64(x64: np.ndarray, weights: Sequence[float]) -> np.ndarray:
    """``sum_i x_i * (w_i / sum w)``, accumulated in reply order as Flower's FedAvg does, so
    float64 arrays give Flower's bits."""
    total = sum(weights)
    acc = x64[0] * (weights[0] / total)
    for row, w in zip(x64[1:], weights[1:], strict=True):
        acc += row * (w / total)
    return acc


def trimmed_mean64(x64: np.ndarray, f: int) -> np.ndarray:
    """Per column, the mean of the values left after dropping the ``f`` lowest and highest."""
    n = x64.shape[0]
    part = np.partition(x64, (f, n - f - 1), axis=0)
    return np.mean(part[f : n - f], axis=0)


def closest_to_median64(x64: np.ndarray, beta: int) -> np.ndarray:
    """Per column, the mean of the ``beta`` values closest to the column's median (ties: the
    lower value)."""
    s = np.sort(x64, axis=0)
    med = np.median(s, axis=0)
    near = np.argsort(np.abs(s - med), axis=0, kind="stable")[:beta]
    return np.mean(np.take_along_axis(s, near, axis=0), axis=0)


# ---- both sides ---------------------------------------------------------------------------------


def weighted_mean(
    stack: Stack, weights: Sequence[float], backend: str | None = None
) -> list[np.ndarray]:
    """Flower's FedAvg: the mean weighted by example counts (``weights`` >= 0, sum > 0)."""
    pos = [i for i, w in enumerate(weights) if w > 0]
    v32 = torch.empty(0)
    if stack.x32.shape[1]:
        w = torch.tensor([weights[i] for i in pos], dtype=torch.float64)
        x = stack.x32 if len(pos) == len(stack) else stack.x32[pos]  # zero weights add nothing
        v32 = rules.mean(x, weights=w, backend=backend, check=False)
    v64 = flower_weighted_mean64(stack.x64, weights) if stack.x64.shape[1] else stack.x64[0]
    return stack.unstack(v32, v64)


def coordinatewise(stack: Stack, rule: str, f: int, backend: str | None = None) -> list[np.ndarray]:
    """``median`` or ``trimmed_mean`` (``f`` dropped at each end) on both matrices."""
    v32 = torch.empty(0)
    if stack.x32.shape[1]:
        v32 = rules.get(rule).fn(stack.x32, f=f, backend=backend, check=False)
    v64 = stack.x64[0]
    if stack.x64.shape[1]:
        v64 = np.median(stack.x64, axis=0) if rule == "median" else trimmed_mean64(stack.x64, f)
    return stack.unstack(v32, v64)


def flower_krum_order(dist: torch.Tensor, f: int) -> list[int]:
    """Clients by increasing Krum score with Flower's neighbour count ``max(1, n - f - 2)``
    (at most ``n - 1``), whatever the paper's precondition; ties go to the lower index."""
    n = dist.shape[0]
    k = min(max(1, n - f - 2), n - 1)
    return torch.sort(krum_scores(dist, k), stable=True).indices.tolist()


def paper_selection(rule: str, dist: torch.Tensor, f: int, m: int | None = None) -> list[int]:
    """The clients a selection rule of :mod:`bcfl_engine.rules` chooses, in its order."""
    n = dist.shape[0]
    if rule == "bulyan":
        return iterated_krum(dist, f, n - 2 * f).tolist()
    order = krum_order(dist, f).tolist()
    return order[:1] if rule == "krum" else order[: n - f if m is None else m]


def selected_mean(
    stack: Stack,
    chosen: Sequence[int],
    weights: Sequence[float] | None = None,
    backend: str | None = None,
) -> list[np.ndarray]:
    """The mean of the chosen clients (weighted by ``weights`` if given, Flower's way)."""
    if len(chosen) == 1:  # one update: itself, as x * (w / w) = x exactly
        return stack.unstack(stack.x32[chosen[0]], stack.x64[chosen[0]])
    sub = stack.take(chosen)
    if weights is not None:
        return weighted_mean(sub, [weights[i] for i in chosen], backend)
    v32 = rules.mean(sub.x32, backend=backend, check=False) if sub.x32.shape[1] else torch.empty(0)
    return stack.unstack(v32, np.mean(sub.x64, axis=0))


def bulyan_coordinates(stack: Stack, chosen: Sequence[int], beta: int) -> list[np.ndarray]:
    """Bulyan's second stage on the chosen clients: per coordinate, the mean of the ``beta``
    values closest to their median."""
    sub = stack.take(chosen)
    v32 = torch.empty(0)
    if sub.x32.shape[1]:
        idx = torch.arange(len(sub))
        v32 = bulyan_coordinates_reference(sub.x32, idx, beta)
    v64 = closest_to_median64(sub.x64, beta) if sub.x64.shape[1] else sub.x64[0]
    return stack.unstack(v32, v64)


def engine_aggregate(
    arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    *,
    rule: str,
    f: int,
    params: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    backend: str | None = None,
    stack: Stack | None = None,
    pool: StackPool | None = None,
    dist: torch.Tensor | None = None,
) -> tuple[list[np.ndarray], list[int] | None]:
    """Aggregate with a rule of :mod:`bcfl_engine.rules` (its paper's semantics).

    Returns the aggregate in the clients' shapes and dtypes, and for a selection rule (Krum,
    Multi-Krum, Bulyan) the clients it selected (else None). Mean, median, trimmed mean and
    the selection rules keep float64 arrays in float64; any other rule, or any ``pre`` step,
    sees the whole model in float32 (:func:`bcfl_engine.aggregate`). ``weights`` go to
    weighted rules (the mean by example counts, as Flower's FedAvg). ``stack``: the arrays
    already stacked (:meth:`Stack.of`), to spare a copy; else stacked into ``pool`` if given.
    ``dist``: for a selection rule, the clients' squared distances already known (float64
    ``[n, n]``, as :meth:`Stack.sq_dists`); then only the selected clients are stacked.
    """
    params = dict(params or {})
    info = rules.get(rule)
    n = len(arrays)
    if rule not in SPLIT_RULES or pre:
        w = torch.tensor(list(weights), dtype=torch.float64) if info.weighted else None
        # views over a reply's bytes are read-only; the general path gets writable copies
        own = [[x if np.asarray(x).flags.writeable else np.array(x) for x in a] for a in arrays]
        out = aggregate(own, rule, f, w, backend, pre, **params)
        return [np.asarray(a) for a in out], None
    info.check_precondition(n, f)
    if rule in SELECTION_RULES and stack is None and dist is not None:
        chosen = paper_selection(rule, dist, f, params.get("m"))
        sub = Stack.of([arrays[i] for i in chosen], pool)  # row k is client chosen[k]
        every = range(len(chosen))
        if rule == "bulyan":
            return bulyan_coordinates(sub, every, n - 4 * f), chosen
        return selected_mean(sub, every, None, backend), chosen
    stack = Stack.of(arrays, pool) if stack is None else stack
    if rule == "mean":
        return weighted_mean(stack, weights, backend), None
    if rule in ("median", "trimmed_mean"):
        return coordinatewise(stack, rule, f, backend), None
    chosen = paper_selection(
        rule, stack.sq_dists(backend) if dist is None else dist, f, params.get("m")
    )
    if rule == "bulyan":
        return bulyan_coordinates(stack, chosen, n - 4 * f), chosen
    return selected_mean(stack, chosen, None, backend), chosen
