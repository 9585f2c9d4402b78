"""The aggregator's call on lean payloads: headroom checked, a sum mod ``2^b``, a lift to ``q_0``.

A sum of CKKS ciphertexts that exceeds its modulus wraps silently: the decryption is garbage and
nothing in CKKS detects it (measured: weight 4 on 1,000 clients of all-ones gave an error of
5.8e3). So the headroom is checked, never assumed: the weights (integers, as the sum multiplies
by them exactly) must sum to at most the payloads' ``max_weight_sum``, which every payload's
header states and :func:`~bcfl_engine.he.lean_wire.layout_of` checks against ``q_0``, the scale
and the bound on ``|x|``. The check runs before any payload past the first is read.

What it cannot check: a client's values. An honest client's :func:`~bcfl_engine.he.encrypt`
refuses values beyond the bound; a malicious one can encrypt anything (nobody sees it in the
clear) and make the sum, or its bucket's sum, wrap. The robust secure round (clients shuffled
into buckets, bucket sums decrypted, a robust rule over bucket means) is the answer to that: a
wrapped bucket is one outlier among the bucket means.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backends import _load_native, native
from ..errors import HeadroomExceeded, InvalidArgument, InvalidWeight, PayloadError
from . import lean, lean_wire
from .keys import context_info

# Clients parsed per block: the int64 buffer stays under this many bytes whatever n is.
BLOCK_BYTES = 256 << 20


def lean_weights(
    weights: Sequence[float] | None, n: int, layout: lean_wire.LeanLayout
) -> list[int] | None:
    """The integer weights of a lean aggregate, or None (all 1), after the headroom check.

    InvalidWeight for a weight that is not a non-negative integer (a fractional one would need
    a larger scale: no headroom for it); HeadroomExceeded when they sum past the layout's
    ``max_weight_sum``.
    """
    if weights is None:
        ints, total = None, n
    else:
        w = list(weights)
        if len(w) != n:
            raise InvalidWeight(f"lean aggregate: {len(w)} weights for {n} payloads")
        for i, v in enumerate(w):
            f = float(v)
            if not (math.isfinite(f) and f >= 0 and f.is_integer()):
                raise InvalidWeight(
                    f"lean aggregate: weight {i} is {v!r}; lean payloads sum non-negative "
                    "integer weights only (a fraction would need headroom the preset lacks)"
                )
        ints = [int(float(v)) for v in w]
        total = sum(ints)
        if total == 0:
            raise InvalidWeight("lean aggregate: the weights are all 0")
    if total > layout.max_weight_sum:
        raise HeadroomExceeded(
            f"lean aggregate: the weights sum to {total}; the payloads' headroom holds at most "
            f"{layout.max_weight_sum} (|x| <= {layout.bound}): the sum would wrap. Split the "
            "round into buckets, or use a preset with more headroom"
        )
    return ints


def aggregate_lean(
    payloads: Sequence[Any],
    weights: Sequence[float] | None = None,
    *,
    context: Any = None,
    backend: str | None = None,
    block: int | None = None,
    client_ids: Sequence[Any] | None = None,
    fused: bool | None = None,
) -> bytes:
    """Weighted sum of lean payloads mod ``2^b``, lifted to ``q_0`` -> ``CKKSVectorProto`` bytes.

    Parameters are those of :func:`~bcfl_engine.he.aggregate`: with the extension built,
    ``backend`` None or "native" takes the fused path (payloads unpacked straight into the sum)
    unless ``fused`` is False; otherwise payloads are unpacked into blocks of ``block`` rows
    and summed by :func:`~bcfl_engine.he.lean.lean_sum` on ``backend``. The result is a TenSEAL vector at ``q_0`` and the
    preset's scale, decrypted by :func:`~bcfl_engine.he.decrypt` or any holder of the key.
    """
    n = len(payloads)
    if n == 0:
        raise InvalidArgument("aggregate needs at least one payload")
    ids = list(range(n)) if client_ids is None else list(client_ids)
    try:
        layout = lean_wire.layout_of(payloads[0])
        if context is not None:
            lean_wire.check_context(layout, context_info(context))
    except PayloadError as exc:
        raise PayloadError(f"client {ids[0]!r}: {exc}") from None
    ints = lean_weights(weights, n, layout)
    if fused is not False and backend in (None, "native") and _load_native()[0] is not None:
        return _aggregate_fused(payloads, ints, layout, ids)
    per_client = 8 * int(np.prod(layout.shape))
    step = block or max(1, min(n, BLOCK_BYTES // per_client))
    device = "cuda" if backend in (None, "triton") and torch.cuda.is_available() else "cpu"
    rows = np.empty((min(step, n), *layout.shape), dtype=np.uint64)
    acc: torch.Tensor | None = None
    for start in range(0, n, step):
        m = min(step, n - start)
        for j in range(m):
            try:
                lean_wire.parse(payloads[start + j], layout, out=rows[j])
            except PayloadError as exc:
                raise PayloadError(f"client {ids[start + j]!r}: {exc}") from None
        x = torch.from_numpy(rows[:m].view(np.int64)).to(device)
        w = None if ints is None else ints[start : start + m]
        acc = lean.lean_sum(x, layout.b, w, acc=acc, backend=backend)
    assert acc is not None
    return lean_wire.to_tenseal(acc.cpu().numpy(), layout)


def _aggregate_fused(
    payloads: Sequence[Any], ints: list[int] | None, layout: lean_wire.LeanLayout, ids: list[Any]
) -> bytes:
    """Every header checked first, then each payload unpacked straight into the sum (C++):
    one pass over the payload bytes, no ``[n, C, 2, N]`` buffer. Accepts and rejects what the
    two-pass path does (a payload whose header is not the layout's names its client)."""
    head = layout.header()
    for i, blob in enumerate(payloads):
        buf = memoryview(blob)
        if len(buf) != layout.nbytes or bytes(buf[: len(head)]) != head:
            try:
                lean_wire.parse(buf, layout)  # raises, naming what differs
            except PayloadError as exc:
                raise PayloadError(f"client {ids[i]!r}: {exc}") from None
            raise PayloadError(f"client {ids[i]!r}: its header is not the aggregate's")
    acc = torch.empty(layout.shape, dtype=torch.int64)
    w = None if ints is None else lean.weights_u64(ints, layout.b)
    native().lean_accumulate(
        list(payloads), lean_wire.HEADER.size, layout.b, layout.k, w, acc, True
    )
    return lean_wire.to_tenseal(acc.numpy(), layout)


class LeanRows:
    """Lean payloads parsed for a round before they are durable, their weights held against the
    headroom (:meth:`LeanRunningSum.admit`); :meth:`LeanRunningSum.take` sums them.

    ``total`` is the round's weight sum once these rows and every earlier part of the same
    burst are taken: a later part's weights are checked against it.
    """

    def __init__(self, layout: lean_wire.LeanLayout | None, total: int) -> None:
        self.layout, self.total = layout, total
        # With the extension: the payloads themselves (headers checked), unpacked straight
        # into the sum by take(); without it, their values parsed by admit().
        self.values: list[Any] = []
        self.weights: list[int] = []

    def __len__(self) -> int:
        return len(self.values)


class LeanRunningSum:
    """Lean payloads summed one at a time, as a round accepts them, the headroom checked as the
    weights come: the sum of the weights accepted so far never passes ``max_weight_sum``.

    :meth:`result` is the bytes :func:`aggregate_lean` writes for the same payloads and integer
    weights (an audit that recomputes it gets the same digest). A payload that fails a check
    raises (PayloadError naming the client, HeadroomExceeded, InvalidWeight) and changes
    nothing. A round (:class:`~bcfl_engine.round.AggregationRound`) checks a burst first
    (:meth:`batch`, :meth:`admit`) and sums it once it is durable (:meth:`take`), as it does
    with :class:`~bcfl_engine.he.running_sum.RunningSum`.

    Parameters
    ----------
    context : the public context (bytes or ``tenseal.Context``) payloads are checked against;
        None: against the first payload's layout only
    """

    def __init__(self, context: Any = None) -> None:
        self.info = None if context is None else context_info(context)
        self.layout: lean_wire.LeanLayout | None = None
        self.weight_sum = 0
        self._acc: torch.Tensor | None = None

    def check(
        self, client: Any, blob: Any, layout: lean_wire.LeanLayout | None = None
    ) -> np.ndarray:
        """``blob``'s values mod ``2^b`` ``[C, 2, N]``, parsed against the round's layout (the
        first payload's, else ``layout``, else its own) and the context."""
        try:
            layout = self.layout or layout or lean_wire.layout_of(blob)
            if self.info is not None:
                lean_wire.check_context(layout, self.info)
            return lean_wire.parse(blob, layout)
        except PayloadError as exc:
            raise PayloadError(f"client {client!r}: {exc}") from None

    def _checked(self, client: Any, blob: Any, layout: lean_wire.LeanLayout | None) -> Any:
        """``blob`` itself once its size and header are the round's layout's (the first
        payload's layout checked against the context in full); raises naming ``client``."""
        if layout is None:  # the first payload: its header parsed and checked against context
            self.check(client, blob)
            return blob
        buf = memoryview(blob)
        head = layout.header()
        if len(buf) != layout.nbytes or bytes(buf[: len(head)]) != head:
            self.check(client, blob, layout)  # raises, naming what differs
            raise PayloadError(f"client {client!r}: its header is not the round's")
        return blob

    def batch(self, capacity: int = 1, prev: LeanRows | None = None) -> LeanRows:
        """Empty rows for a burst's part (``capacity`` is a hint); ``prev``: the part before it
        in the same burst, not summed yet (its layout and weights count)."""
        if prev is None:
            return LeanRows(self.layout, self.weight_sum)
        return LeanRows(self.layout or prev.layout, prev.total)

    def admit(self, rows: LeanRows, client: Any, blob: Any, weight: Any = 1) -> None:
        """Check ``blob`` and its ``weight`` (a non-negative integer within the headroom left
        after ``rows``) and keep them in ``rows``; raises and keeps nothing otherwise."""
        layout = rows.layout or self.layout
        if _load_native()[0] is not None:  # the header checked now, the body summed by take()
            values: Any = self._checked(client, blob, layout)
        else:
            values = self.check(client, blob, layout)
        layout = layout or lean_wire.layout_of(blob)
        f = float(weight)
        if isinstance(weight, bool) or not (math.isfinite(f) and f >= 0 and f.is_integer()):
            raise InvalidWeight(f"client {client!r}: weight {weight!r} is not an integer >= 0")
        if rows.total + int(f) > layout.max_weight_sum:
            raise HeadroomExceeded(
                f"client {client!r}: its weight {int(f)} takes the round's weight sum to "
                f"{rows.total + int(f)}, past the payloads' headroom of "
                f"{layout.max_weight_sum}: the sum would wrap"
            )
        rows.layout, rows.total = layout, rows.total + int(f)
        rows.values.append(values)
        rows.weights.append(int(f))

    def take(self, rows: LeanRows, weights: Sequence[int] | None = None) -> None:
        """Add ``rows`` (admitted, in order) to the sum; ``weights``, if given, must be those
        admitted."""
        if not len(rows):
            return
        if weights is not None and [int(w) for w in weights] != rows.weights:
            raise InvalidArgument("take: the weights are not those the rows were admitted with")
        layout = rows.layout
        assert layout is not None
        if _load_native()[0] is not None:  # one pass over the payloads' bytes (C++)
            fresh = self._acc is None
            acc = torch.empty(layout.shape, dtype=torch.int64) if fresh else self._acc
            w = (
                None
                if all(w == 1 for w in rows.weights)
                else lean.weights_u64(rows.weights, layout.b)
            )
            native().lean_accumulate(
                rows.values, lean_wire.HEADER.size, layout.b, layout.k, w, acc, fresh
            )  # fmt: skip
            self._acc = acc
        else:
            x = torch.from_numpy(np.stack(rows.values).view(np.int64))
            self._acc = lean.lean_sum(x, layout.b, rows.weights, acc=self._acc)
        self.layout, self.weight_sum = rows.layout, self.weight_sum + sum(rows.weights)

    def add(self, client: Any, blob: Any, weight: Any = 1) -> None:
        """Check ``blob`` and its ``weight`` (a non-negative integer within the headroom left),
        then add ``weight`` times it to the sum."""
        rows = self.batch()
        self.admit(rows, client, blob, weight)
        self.take(rows)

    def result(self) -> bytes:
        """The sum lifted to ``q_0``: ``CKKSVectorProto`` bytes (see :func:`aggregate_lean`)."""
        if self.layout is None or self._acc is None:
            raise InvalidArgument("the running sum holds no payload yet")
        return lean_wire.to_tenseal(self._acc.numpy(), self.layout)
