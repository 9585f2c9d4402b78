"""The fused aggregate: payloads decoded straight into the running modular sum (C++).

:class:`~bcfl_engine.he.batch.CiphertextBatch` writes every client's residues into an int64
``[n, C, 2, K, N]`` buffer that :func:`~bcfl_engine.he.ckks_sum.ckks_sum` then reads back: two
passes over 8 bytes a residue on top of reading the payload. ``csrc/ckks_accumulate.cpp``
decodes each payload (compact, bit-packed or not; TenSEAL with SEAL bodies stored, zlib or
zstd) once, straight into the accumulator ``[C, 2, K, N]``, checking every residue on the way;
memory is the accumulator, whatever ``n`` is. Its result is bit-identical to the batch path's
(``tests/test_he_accumulate.py``) and it accepts and rejects exactly the same payloads.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..backends import native, native_zstd
from ..errors import InvalidArgument, PayloadError
from . import wire
from .ckks_sum import shoup_tables


def native_layout(layout: wire.Layout) -> Any:
    """``layout`` as the extension's ``CkksLayout``, checked once (N a power of two, primes in
    (1, 2^60), ...) and holding its own copy of the primes, parms_id and sizes."""
    return native().CkksLayout(
        layout.poly_degree,
        layout.d,
        int(layout.pair),
        layout.scale,
        layout.primes,
        layout.parms_id,
        layout.sizes,
    )


def accumulate(
    payloads: Sequence[Any],
    layout: wire.Layout,
    weights: Sequence[int] | None = None,
    client_ids: Sequence[Any] | None = None,
    acc: torch.Tensor | None = None,
) -> tuple[torch.Tensor, list[tuple[int, int] | None]]:
    """Weighted modular sum of ``n`` payloads -> (residues ``[C, 2, K, N]`` int64, versions).

    Parameters
    ----------
    payloads : ``n`` payloads of ``layout`` (bytes-like)
    weights : ``n`` non-negative integers, or None for a plain sum
    client_ids : names used in errors (default ``0 .. n-1``)
    acc : a running sum to add into, in place (int64, contiguous, ``layout.shape``, each
        residue below its prime: what an earlier call returned); None starts from zeros.
        Payloads that arrive one at a time are each decoded straight into it: no buffer and no
        second pass per payload. After a :class:`~bcfl_engine.errors.PayloadError` it holds a
        partial sum: a caller whose sum must survive a bad payload keeps a copy to restore

    Returns the residues (each below its prime; ``acc`` itself when given) and each payload's
    SEAL version (None for a compact payload). A payload that fails any check raises
    :class:`~bcfl_engine.errors.PayloadError` naming the first such client, with the batch
    parser's message.
    """
    if not native_zstd():  # the Python codec decompresses zstd bodies for the extension
        decoded = []
        for i, blob in enumerate(payloads):
            try:
                decoded.append(wire.without_zstd(blob, layout.residues, layout.poly_degree))
            except PayloadError as exc:
                name = i if client_ids is None else client_ids[i]
                raise PayloadError(f"client {name!r}: {exc}") from None
        payloads = decoded
    w = ws = None
    if weights is not None:
        w, ws = shoup_tables(weights, layout.primes)
    if acc is None:
        acc = torch.zeros(layout.shape, dtype=torch.int64)
    elif (
        acc.dtype != torch.int64
        or tuple(acc.shape) != layout.shape
        or not acc.is_contiguous()
        or acc.device.type != "cpu"
    ):
        raise InvalidArgument(
            f"accumulate: acc must be a contiguous int64 {layout.shape} on the CPU; got "
            f"{acc.dtype} {tuple(acc.shape)} on {acc.device}"
        )
    bad, msg, versions = native().he_accumulate(payloads, native_layout(layout), w, ws, acc)
    if bad >= 0:
        name = bad if client_ids is None else client_ids[bad]
        raise PayloadError(f"client {name!r}: {msg}")
    return acc, [(int(a), int(b)) if a else None for a, b in versions]
