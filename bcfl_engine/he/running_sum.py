"""The homomorphic weighted sum of a round's ciphertexts, taken one payload at a time.

An :class:`~bcfl_engine.round.AggregationRound` under CKKS never holds its payloads: each is
parsed once when it arrives, against the layout the round's first payload fixed (same length,
level, primes, scale and pairing: a mismatching one is refused before it is stored), and its
residues are added into one accumulator ``[C, 2, K, N]``. The result is the bytes
:func:`bcfl_engine.he.aggregate` writes for the same payloads and integer weights, so an audit
that recomputes it with that function gets the same digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ..errors import InvalidArgument
from .batch import CiphertextBatch, to_tenseal
from .ckks_sum import ckks_sum


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

    def batch(self, capacity: int, layout: Any = None) -> CiphertextBatch:
        """An empty batch for a burst of up to ``capacity`` payloads: :meth:`CiphertextBatch.add`
        parses each one (PayloadError naming the client and the mismatch) against the round's
        layout; before any was summed, against ``layout`` (an earlier part of the same burst
        fixed it) or else the batch's first good payload."""
        return CiphertextBatch(self.context, capacity, layout=self._layout or layout)

    def check(self, client: str, data: bytes) -> CiphertextBatch:
        """``data`` parsed into a one-row batch (PayloadError naming ``client``)."""
        row = self.batch(1)
        row.add(client, data)
        return row

    def add(self, rows: CiphertextBatch, weights: Sequence[int]) -> None:
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
