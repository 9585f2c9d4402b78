"""The homomorphic weighted sum of a round's ciphertexts, taken one payload at a time.

An :class:`~bcfl_engine.round.AggregationRound` under CKKS never holds its payloads: each is
parsed once when it arrives, against the layout the round's first payload fixed (same length,
level, primes, scale and pairing: a mismatching one is refused before it is stored), and its
residues are added into one accumulator ``[C, 2, K, N]``. The result is the bytes
:func:`bcfl_engine.he.aggregate` writes for the same payloads and integer weights, so an audit
that recomputes it with that function gets the same digest.
"""

from __future__ import annotations

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
        self._probe: CiphertextBatch | None = None  # one row: the payload being checked
        self._acc: Any = None
        self._version: tuple[int, int] | None = None

    def check(self, client: str, data: bytes) -> CiphertextBatch:
        """Parse ``data`` (PayloadError naming ``client`` and the mismatch); the parsed row is
        what :meth:`add` takes. The first payload fixes the layout."""
        if self._probe is None:
            probe = CiphertextBatch(self.context, 1)
        else:
            probe = self._probe
            probe.reset()
        probe.add(client, data)
        return probe

    def add(self, row: CiphertextBatch, weight: int) -> None:
        """Add the row :meth:`check` parsed, times the integer ``weight``."""
        assert row.layout is not None  # check() parsed a payload into it
        self._probe = row
        self._acc = ckks_sum(row.residues, row.layout.primes, [weight], acc=self._acc)
        self._version = self._version or row.versions[0]

    def result(self) -> bytes:
        """The sum as CKKSVectorProto bytes: the first TenSEAL payload's SEAL version (4.3 for
        compact payloads); integer weights keep the scale."""
        probe = self._probe
        if probe is None or probe.layout is None:
            raise InvalidArgument("the running sum holds no ciphertext yet")
        return bytes(
            to_tenseal(self._acc, probe.layout, None, self._version or (4, 3), probe.codec)
        )
