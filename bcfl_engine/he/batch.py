"""CiphertextBatch: clients' CKKS payloads parsed straight into rows of one int64 buffer."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ..backends import _load_native, native, native_zstd
from ..errors import BatchFull, DuplicateClient, InvalidArgument, PayloadError
from . import wire
from .accumulate import native_layout
from .ckks_sum import ckks_sum
from .keys import ContextInfo, context_info

CODECS = ("native", "python")


def native_input(blob: Any, layout: wire.Layout) -> Any:
    """``blob`` as the native codec reads it: as is, or with its zstd bodies decompressed by the
    Python codec when the extension has no zstd library (:func:`~bcfl_engine.backends.zstd_path`).
    """
    return blob if native_zstd() else wire.without_zstd(blob, layout.residues, layout.poly_degree)


class CiphertextBatch:
    """``n`` clients' ciphertexts as residues ``[capacity, C, 2, K, N]`` int64.

    Parameters
    ----------
    context : the public context (bytes or ``tenseal.Context``) payloads are checked against;
        None accepts compact payloads only (they carry their primes) and checks them against
        the first one
    capacity : rows to preallocate
    layout : the :class:`~bcfl_engine.he.wire.Layout` every payload must have; None takes it
        from the first payload added
    codec : "native" (C++ extension), "python" (numpy reference) or None (native if built)

    A payload that fails any check raises :class:`~bcfl_engine.errors.PayloadError` naming the
    client and leaves the batch as it was (``len``, ids and rows ``[0, len)`` unchanged).
    """

    def __init__(
        self,
        context: Any = None,
        capacity: int = 1,
        *,
        layout: wire.Layout | None = None,
        codec: str | None = None,
    ) -> None:
        if not isinstance(capacity, int) or capacity < 1:
            raise InvalidArgument(f"capacity must be an int >= 1; got {capacity!r}")
        if codec is not None and codec not in CODECS:
            raise InvalidArgument(f"codec must be one of {CODECS} or None; got {codec!r}")
        if codec == "native" and _load_native()[1]:
            raise InvalidArgument(f"codec='native' unavailable: {_load_native()[1]}")
        self.info: ContextInfo | None = None if context is None else context_info(context)
        self.capacity = capacity
        self.codec = codec or ("python" if _load_native()[1] else "native")
        self.client_ids: list[Any] = []
        self.versions: list[tuple[int, int] | None] = []
        self.layout: wire.Layout | None = None
        self.data: torch.Tensor | None = None
        if layout is not None:
            self._set_layout(layout)

    def __len__(self) -> int:
        return len(self.client_ids)

    def _set_layout(self, layout: wire.Layout) -> None:
        self.layout = layout
        self.data = torch.empty((self.capacity, *layout.shape), dtype=torch.int64)
        # Checked once for the batch (the python codec may run without the extension).
        self._native_layout = native_layout(layout) if self.codec == "native" else None

    def _check_id(self, client_id: Any, pending: Sequence[Any] = ()) -> None:
        if client_id in self.client_ids or client_id in pending:
            raise DuplicateClient(f"client {client_id!r} already added to this batch")

    def _adopt(self, client_id: Any, blob: Any) -> bool:
        """Fix the layout from the first payload; True if this call set it."""
        if self.layout is not None:
            return False
        try:
            self._set_layout(wire.peek(blob, self.info))
        except PayloadError as exc:
            raise PayloadError(f"client {client_id!r}: {exc}") from None
        return True

    def _parse_row(self, row: int, blob: Any) -> tuple[int, int] | None:
        assert self.layout is not None and self.data is not None
        if self.codec == "native":
            rc, msg, major, minor = native().he_parse(
                native_input(blob, self.layout), self._native_layout, self.data[row]
            )
            if rc:
                raise PayloadError(msg)
            return (major, minor) if major else None
        residues, version = wire.parse(blob, self.layout)
        self.data[row].copy_(torch.from_numpy(residues.view(np.int64)))
        return version

    def add(self, client_id: Any, blob: bytes | bytearray | memoryview) -> int:
        """Parse ``blob`` (TenSEAL ``CKKSVector.serialize()`` bytes or compact) into the next row."""
        if len(self) >= self.capacity:
            raise BatchFull(f"batch holds {self.capacity} clients; cannot add {client_id!r}")
        self._check_id(client_id)
        adopted = self._adopt(client_id, blob)
        row = len(self)
        try:
            version = self._parse_row(row, blob)
        except PayloadError as exc:
            if adopted:
                self.layout, self.data = None, None
            raise PayloadError(f"client {client_id!r}: {exc}") from None
        self.client_ids.append(client_id)
        self.versions.append(version)
        return row

    def add_many(self, items: Sequence[tuple[Any, Any]]) -> None:
        """Add ``(client_id, blob)`` pairs, parsed in parallel; all or none are added."""
        if len(self) + len(items) > self.capacity:
            raise BatchFull(
                f"batch has {self.capacity - len(self)} free rows; got {len(items)} payloads"
            )
        ids = [cid for cid, _ in items]
        for j, cid in enumerate(ids):
            self._check_id(cid, ids[:j])
        if not items:
            return
        adopted = self._adopt(*items[0])
        try:
            versions = self._parse_rows([blob for _, blob in items], ids)
        except PayloadError:
            if adopted:
                self.layout, self.data = None, None
            raise
        self.client_ids.extend(ids)
        self.versions.extend(versions)

    def _parse_rows(self, blobs: Sequence[Any], ids: Sequence[Any]) -> list[tuple[int, int] | None]:
        start = len(self)
        if self.codec != "native":
            out = []
            for j, blob in enumerate(blobs):
                try:
                    out.append(self._parse_row(start + j, blob))
                except PayloadError as exc:
                    raise PayloadError(f"client {ids[j]!r}: {exc}") from None
            return out
        assert self.data is not None and self.layout is not None
        inputs = []
        for j, blob in enumerate(blobs):
            try:
                inputs.append(native_input(blob, self.layout))
            except PayloadError as exc:
                raise PayloadError(f"client {ids[j]!r}: {exc}") from None
        bad, msg, versions = native().he_parse_many(
            inputs, self._native_layout, self.data[start : start + len(inputs)]
        )
        if bad >= 0:
            raise PayloadError(f"client {ids[bad]!r}: {msg}")
        return [(int(a), int(b)) if a else None for a, b in versions]

    @property
    def residues(self) -> torch.Tensor:
        """The filled rows ``[len, C, 2, K, N]`` (a view)."""
        if self.data is None:
            raise InvalidArgument("empty batch: no layout yet")
        return self.data[: len(self)]

    def reset(self) -> None:
        """Forget the rows (keep the buffer and layout): the next block of a streamed round."""
        self.client_ids.clear()
        self.versions.clear()

    def sum(
        self,
        weights: Sequence[float] | None = None,
        *,
        frac_bits: int = 16,
        acc: torch.Tensor | None = None,
        backend: str | None = None,
    ) -> tuple[torch.Tensor, float]:
        """Homomorphic weighted sum of the rows -> (residues ``[C, 2, K, N]``, its scale).

        Integer weights multiply residues exactly and keep the scale; fractional ones are
        rounded to ``round(w * 2^frac_bits)`` and the scale is multiplied by ``2^frac_bits``.
        """
        if len(self) == 0 or self.layout is None:
            raise InvalidArgument("cannot sum an empty batch")
        ints, scale = integer_weights(weights, len(self), self.layout, frac_bits)
        return ckks_sum(self.residues, self.layout.primes, ints, acc=acc, backend=backend), scale

    def to_tenseal(self, residues: torch.Tensor, scale: float | None = None) -> bytes:
        """``residues`` ``[C, 2, K, N]`` as CKKSVectorProto bytes TenSEAL loads.

        Echoes the SEAL version of the first TenSEAL payload (4.3, what TenSEAL 0.3.18 writes,
        for compact ones).
        """
        if self.layout is None:
            raise InvalidArgument("empty batch: no layout yet")
        return to_tenseal(
            residues, self.layout, scale, next((v for v in self.versions if v), (4, 3)), self.codec
        )


def integer_weights(
    weights: Sequence[float] | None, n: int, layout: wire.Layout, frac_bits: int
) -> tuple[list[int] | None, float]:
    """Client weights as the integers the sum multiplies by, and the aggregate's scale."""
    if weights is None:
        return None, layout.scale
    w = [float(x) for x in weights]
    if len(w) != n or not all(math.isfinite(x) and x >= 0 for x in w) or not any(w):
        raise InvalidArgument(
            f"weights must be {n} finite non-negative numbers, not all 0; got {w[:8]}"
        )
    if all(x.is_integer() for x in w):
        return [int(x) for x in weights], layout.scale
    if not isinstance(frac_bits, int) or frac_bits < 1:
        raise InvalidArgument(f"frac_bits must be an int >= 1; got {frac_bits!r}")
    scale = layout.scale * 2.0**frac_bits
    bound = sum(q.bit_length() for q in layout.primes)
    if int(math.log2(scale)) >= bound:  # SEAL's is_scale_within_bounds
        raise InvalidArgument(
            f"fractional weights scale the result to 2^{math.log2(scale):.0f}, past the level's "
            f"{bound} bits: use a smaller frac_bits or integer weights"
        )
    return [round(x * 2**frac_bits) for x in w], scale


def to_tenseal(
    residues: torch.Tensor,
    layout: wire.Layout,
    scale: float | None,
    version: tuple[int, int],
    codec: str,
) -> bytes:
    """CKKSVectorProto bytes of ``residues`` ``[C, 2, K, N]`` (native writer or Python)."""
    scale = layout.scale if scale is None else float(scale)
    res = residues.detach().cpu().contiguous()
    if codec != "native":
        return wire.to_tenseal(res.numpy().view(np.uint64), layout, scale, version)
    out: bytes = native().he_proto_bytes(res, native_layout(layout), scale, version[0], version[1])
    return out
