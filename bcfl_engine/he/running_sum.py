"""The homomorphic weighted sum of a round's ciphertexts, taken one payload at a time.

An :class:`~bcfl_engine.round.AggregationRound` under CKKS never holds its payloads: each is
parsed once when it arrives, against the layout the round's first payload fixed (same length,
level, primes, scale and pairing: a mismatching one is refused before it is stored), and its
residues are added into one accumulator ``[C, 2, K, N]``. The result is the bytes
:func:`bcfl_engine.he.aggregate` writes for the same payloads and integer weights, so an audit
that recomputes it with that function gets the same digest. Under a lean preset's context the
round keeps a :class:`~bcfl_engine.he.lean_aggregate.LeanRunningSum` instead (same calls:
``batch``, ``admit``, ``take``, ``result``), which also holds the weights to the payloads'
headroom (:func:`for_context`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgument
from . import presets
from .batch import CiphertextBatch, to_tenseal
from .ckks_sum import ckks_sum
from .keys import context_info
from .lean_aggregate import LeanRunningSum


def for_context(context: Any) -> RunningSum | LeanRunningSum:
    """The running sum a round under the public ``context`` keeps: a
    :class:`~bcfl_engine.he.lean_aggregate.LeanRunningSum` when the context is a lean preset's
    (its clients send lean payloads), else a :class:`RunningSum`."""
    info = context_info(context)
    preset = presets.of_context(info.poly_degree, info.scale, info.highest.bits)
    if preset is not None and preset.lean:
        return LeanRunningSum(context)
    return RunningSum(context)


class RunningSum:
    """Parses ciphertexts against the first one's layout and sums them, weighted, as they come.

    Parameters
    ----------
    context : the public context (bytes) the payloads are parsed against.
    """

    def __init__(self, context: Any) -> None:
        self.context = context
        self._layout: Any = None  # fixed by the first payload summed
        self._codec = "python"
        self._acc: Any = None
        self._version: tuple[int, int] | None = None

    def batch(self, capacity: int, prev: CiphertextBatch | None = None) -> CiphertextBatch:
        """An empty batch for a burst of up to ``capacity`` payloads: :meth:`admit` parses each
        one (PayloadError naming the client and the mismatch) against the round's layout;
        before any was summed, against the layout of ``prev`` (an earlier part of the same
        burst, not summed yet) or else the batch's first good payload."""
        layout = self._layout or (prev.layout if prev is not None else None)
        return CiphertextBatch(self.context, capacity, layout=layout)

    def admit(self, rows: CiphertextBatch, client: str, data: bytes, weight: int = 1) -> None:
        """Parse ``data`` into ``rows`` (its weight is not checked here: these presets state
        no headroom in their payloads; a lean round's :class:`LeanRunningSum` does)."""
        rows.add(client, data)

    def check(self, client: str, data: bytes) -> CiphertextBatch:
        """``data`` parsed into a one-row batch (PayloadError naming ``client``)."""
        row = self.batch(1)
        self.admit(row, client, data)
        return row

    def take(self, rows: CiphertextBatch, weights: Sequence[int]) -> None:
        """Add the payloads parsed into ``rows``, times their integer ``weights``."""
        if not len(rows):
            return
        assert rows.layout is not None and len(weights) == len(rows)
        self._layout, self._codec = self._layout or rows.layout, rows.codec
        self._acc = ckks_sum(rows.residues, rows.layout.primes, list(weights), acc=self._acc)
        self._version = self._version or next((v for v in rows.versions if v), None)

    def result(self) -> bytes:
        """The sum as CKKSVectorProto bytes: the first TenSEAL payload's SEAL version (4.3 for
        compact payloads); integer weights keep the scale."""
        if self._layout is None:
            raise InvalidArgument("the running sum holds no ciphertext yet")
        return bytes(
            to_tenseal(self._acc, self._layout, None, self._version or (4, 3), self._codec)
        )
