"""Flower's train replies read for the engine: arrays as views over their bytes, weights,
the NaN screen, the stack or the distances read off the views, and the result record.

Flower's ``RecordDict.array_records`` / ``metric_records`` build a new checked dict on every
access (about 20 us for a reply of three records); :func:`records_of` walks a reply's records
once. :func:`train_metrics` is Flower's default train-metric aggregation
(``aggregate_metricrecords``: the replies' metrics weighted by their share of
``weighted_by_key``) with the same arithmetic in the same order, reading each reply once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..errors import MissingDependency
from .flower_arrays import Stack, layout
from .flower_npy import StackPool, npy_bytes, npy_view
from .flower_policy import finite_rows, screen
from .flower_rows import rows_sq_dists

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
    from flwr.common.constant import SType
    from flwr.serverapp.strategy.strategy_utils import (
        aggregate_metricrecords,
        validate_message_reply_consistency,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None


def records_of(
    content: RecordDict,
) -> tuple[list[ArrayRecord], list[MetricRecord], list[ConfigRecord]]:
    """A reply's array, metric and config records, each list in the reply's order (as
    ``content.array_records.values()`` and friends), in one walk over its records."""
    arrays: list[ArrayRecord] = []
    metrics: list[MetricRecord] = []
    configs: list[ConfigRecord] = []
    for rec in content.values():
        if isinstance(rec, ArrayRecord):
            arrays.append(rec)
        elif isinstance(rec, MetricRecord):
            metrics.append(rec)
        elif isinstance(rec, ConfigRecord):
            configs.append(rec)
    return arrays, metrics, configs


def consistent(contents: Sequence[RecordDict], weighted_by_key: str, check_arrays: bool) -> bool:
    """True if the replies pass Flower's ``validate_message_reply_consistency``: one
    ArrayRecord each (``check_arrays``) with the first reply's array names, one MetricRecord
    each with the first reply's metric names, among them ``weighted_by_key`` holding a single
    number. False sends the caller to Flower's own check, which raises Flower's error."""
    kinds = []
    for c in contents:
        arrays = [k for k, r in c.items() if isinstance(r, ArrayRecord)]
        metrics = [k for k, r in c.items() if isinstance(r, MetricRecord)]
        if (check_arrays and len(arrays) != 1) or len(metrics) != 1:
            return False
        kinds.append((arrays, metrics))
    first = contents[0]
    keys = [kinds[0][1][0]]
    if check_arrays:
        keys.insert(0, kinds[0][0][0])
    for key in keys:
        names = set(first[key].keys())
        for c in contents[1:]:
            rec = c.get(key)
            if rec is None or set(rec.keys()) != names:
                return False
    metric = keys[-1]
    if weighted_by_key not in first[metric]:
        return False
    return not any(isinstance(c[metric][weighted_by_key], list) for c in contents)


def check_consistency(
    contents: Sequence[RecordDict], weighted_by_key: str, check_arrays: bool
) -> None:
    """Flower's ``validate_message_reply_consistency``, run only where :func:`consistent`
    finds a reply it would reject (Flower's own check then raises Flower's error)."""
    if contents and not consistent(contents, weighted_by_key, check_arrays):
        validate_message_reply_consistency(list(contents), weighted_by_key, check_arrays)


def train_metrics(aggr_fn: Any, contents: list[RecordDict], key: str) -> MetricRecord | None:
    """``aggr_fn(contents, key)``; Flower's default (``aggregate_metricrecords``) computed here:
    each value times its reply's ``weight / total`` (``weight`` under ``key`` in the reply's
    first metric record), summed over the replies in order, lists element by element, ``key``
    itself left out."""
    if aggr_fn is not aggregate_metricrecords:
        return aggr_fn(contents, key)
    per_reply = [records_of(c)[1] for c in contents]
    weights: list[Any] = [m[0][key] for m in per_reply]  # numbers: the replies were validated
    total = sum(weights)
    out: dict[str, Any] = {}
    for records, w in zip(per_reply, weights, strict=True):
        share = w / total
        for rec in records:
            for k, v in rec.items():
                if k == key:
                    continue
                if k not in out:
                    out[k] = [x * share for x in v] if isinstance(v, list) else v * share
                elif isinstance(v, list):
                    out[k] = [c + x * share for c, x in zip(out[k], v, strict=True)]
                else:
                    out[k] = out[k] + v * share
    return MetricRecord(out)


@dataclass
class Replies:
    """The train replies fit to aggregate: contents, arrays (in ``keys`` order), weights, names,
    and once screened for NaN and infinity (:func:`stack_replies`), their arrays stacked for
    the engine (:class:`~.flower_arrays.Stack`)."""

    contents: list[RecordDict]
    arrays: list[list[np.ndarray]]
    weights: list[float]
    names: list[str]
    keys: list[str]
    left_out: list[str]  # "<name>: <why>" for each reply left out
    stacked: Stack | None = None
    dist: torch.Tensor | None = None  # squared distances read off the views (unstacked)

    def __len__(self) -> int:
        return len(self.contents)

    @property
    def stack(self) -> Stack:
        """The stacked arrays (:func:`stack_replies` has run)."""
        if self.stacked is None:
            raise RuntimeError("the replies are not stacked yet: call stack_replies")
        return self.stacked

    def sq_dists(self, backend: str | None = None) -> torch.Tensor:
        """Squared distances between the replies' models, float64 ``[n, n]``: those read off
        the views (:func:`distances_from_views`) or the stack's."""
        return self.dist if self.dist is not None else self.stack.sq_dists(backend)

    def chosen(self, rows: Sequence[int], pool: StackPool | None = None) -> Stack:
        """The ``rows`` alone, stacked in that order: taken from the stack, or (unstacked)
        copied from the views into ``pool``."""
        if self.stacked is not None:
            return self.stacked.take(rows)
        return Stack.of([self.arrays[i] for i in rows], pool)


def array_of(a: Array) -> np.ndarray:
    """A Flower ``Array``'s ndarray: a read-only view over its .npy bytes where they are plain
    (:func:`~.flower_npy.npy_view`), else Flower's own conversion."""
    if a.stype != SType.NUMPY:
        return a.numpy()
    return npy_view(a.data)


def array_from(a: np.ndarray) -> Array:
    """``a`` as a Flower ``Array``, serialized once (:func:`~.flower_npy.npy_bytes`)."""
    a = np.asarray(a)
    if a.dtype.hasobject or a.dtype.fields is not None:
        return Array(a)
    shape = tuple(int(s) for s in a.shape)
    return Array(dtype=str(a.dtype), shape=shape, stype=SType.NUMPY, data=npy_bytes(a))


def read_replies(
    valid: Sequence[Message],
    weighted_by_key: str,
    server_round: int,
    pool: StackPool | None = None,
    stack: bool = True,
) -> Replies | None:
    """The arrays and weights of Flower-validated replies, less those left out (with a
    warning): a weight that is not a count, other shapes, NaN or infinity; None if none is
    left. The arrays are views over the replies' bytes, stacked once into ``pool``'s
    matrices if given; ``stack=False`` stops before stacking and the NaN screen (the caller
    runs :func:`stack_replies` if it needs them)."""
    names = [f"node {m.metadata.src_node_id}" for m in valid]
    contents = [m.content for m in valid]
    parts = [records_of(c) for c in contents]
    records = [p[0][0] for p in parts]
    keys = list(records[0].keys())
    arrays = [
        [array_of(a) for a in rec.values()]
        if list(rec.keys()) == keys
        else [array_of(rec[k]) for k in keys]
        for rec in records
    ]
    weights = [p[1][0][weighted_by_key] for p in parts]
    left_out: list[str] = []
    kept = screen(arrays, weights, names, keys, server_round, finite=False, reasons=left_out)
    if not kept:
        return None
    got = Replies(
        [contents[i] for i in kept],
        [arrays[i] for i in kept],
        [float(weights[i]) for i in kept],  # type: ignore[arg-type]
        [names[i] for i in kept],
        keys,
        left_out,
    )
    return stack_replies(got, server_round, pool) if stack else got


def stack_replies(got: Replies, server_round: int, pool: StackPool | None = None) -> Replies | None:
    """``got`` stacked (into ``pool`` if given), less the replies with NaN or infinity (each
    named in a warning and in ``left_out``); None if none is left."""
    stack = Stack.of(got.arrays, pool)
    rows = finite_rows(stack, got.names, got.keys, server_round, got.left_out)
    if not rows:
        return None
    if len(rows) < len(got):
        stack = stack.take(rows)
        pick = rows
        return Replies(
            [got.contents[i] for i in pick],
            [got.arrays[i] for i in pick],
            [got.weights[i] for i in pick],
            [got.names[i] for i in pick],
            got.keys,
            got.left_out,
            stack,
        )
    got.stacked = stack
    return got


def distances_from_views(
    got: Replies, server_round: int, pool: StackPool | None, backend: str | None
) -> Replies | None:
    """``got`` with its squared distances read off the views where every reply is finite
    (:func:`~.flower_rows.rows_sq_dists`), so a selection stacks only what it selects; else
    ``got`` stacked and screened (:func:`stack_replies`)."""
    if got.arrays:
        slots, _, _ = layout(got.arrays[0])
        dist = rows_sq_dists(got.arrays, slots, backend)
        if dist is not None:
            got.dist = dist
            return got
    return stack_replies(got, server_round, pool)


def to_record(keys: Sequence[str], arrays: Sequence[np.ndarray]) -> ArrayRecord:
    return ArrayRecord({k: array_from(a) for k, a in zip(keys, arrays, strict=True)})


__all__ = [
    "Replies",
    "array_from",
    "array_of",
    "check_consistency",
    "consistent",
    "distances_from_views",
    "read_replies",
    "records_of",
    "stack_replies",
    "to_record",
    "train_metrics",
]
