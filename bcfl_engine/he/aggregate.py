"""The aggregator's call: payloads in, one TenSEAL-loadable aggregate out, never decrypting."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from ..backends import _load_native
from ..errors import InvalidArgument, PayloadError
from . import lean_wire, wire
from .accumulate import accumulate
from .batch import CiphertextBatch, integer_weights, to_tenseal
from .ckks_sum import ckks_sum
from .keys import context_info
from .lean_aggregate import aggregate_lean


def fused_path(backend: str | None, codec: str | None) -> bool:
    """Whether :func:`aggregate` takes the fused native path for these choices."""
    return backend in (None, "native") and codec in (None, "native") and not _load_native()[1]


def _aggregate_fused(
    payloads: Sequence[Any],
    weights: Sequence[float] | None,
    context: Any,
    frac_bits: int,
    ids: list[Any],
) -> bytes:
    info = None if context is None else context_info(context)
    try:
        layout = wire.peek(payloads[0], info)
    except PayloadError as exc:
        raise PayloadError(f"client {ids[0]!r}: {exc}") from None
    ints, scale = integer_weights(weights, len(payloads), layout, frac_bits)
    acc, versions = accumulate(payloads, layout, ints, ids)
    version = next((v for v in versions if v), (4, 3))
    return to_tenseal(acc, layout, scale, version, "native")


# Clients parsed per block: the batch buffer stays under this many bytes whatever n is.
BLOCK_BYTES = 256 << 20


def aggregate(
    payloads: Sequence[Any],
    weights: Sequence[float] | None = None,
    *,
    context: Any = None,
    frac_bits: int = 16,
    backend: str | None = None,
    codec: str | None = None,
    block: int | None = None,
    client_ids: Sequence[Any] | None = None,
    fused: bool | None = None,
) -> Any:
    """Homomorphic weighted sum of clients' encrypted updates -> CKKSVectorProto bytes.

    Parameters
    ----------
    payloads : one per client: TenSEAL ``CKKSVector.serialize()`` bytes (SEAL compression none,
        zlib or zstd) or compact bytes from :func:`~bcfl_engine.he.encrypt`, or lean ones
        (:mod:`~bcfl_engine.he.lean_aggregate`: integer weights within the headroom only). A client's vector
        of ``d`` reals is one payload holding ``ceil(d / slots)`` ciphertexts (TenSEAL's own
        chunking). A list of lists (each client sends several vectors) aggregates each position
        and returns a list.
    weights : per client; None sums. Non-negative integers multiply exactly (level and scale
        kept: the result equals TenSEAL's repeated ``acc += ct``); fractional weights are
        rounded to ``round(w * 2^frac_bits)`` and the result's scale is ``scale * 2^frac_bits``
        (the weights' rounding error is at most ``2^-(frac_bits + 1)`` each).
    context : the public context (bytes or ``tenseal.Context``); required for TenSEAL payloads,
        which carry no primes; compact payloads are checked against it when given
    backend : "torch", "native", "triton" or None for the modular sum
    codec : "native", "python" or None: who parses payloads. With the extension built, backend
        and codec None or "native" take the fused path (:mod:`~bcfl_engine.he.accumulate`:
        payloads decoded straight into the sum, no batch); the others parse into a
        :class:`CiphertextBatch` and sum it, in blocks
    block : clients parsed per step (default: as many as fit :data:`BLOCK_BYTES`); memory stays
        ``O(block)`` payloads whatever ``n`` is
    client_ids : names used in errors (default ``0 .. n-1``)
    fused : False forces the two-pass batch path (benchmarks, tests); None takes the fused one
        where it can run

    Returns
    -------
    bytes : ``CKKSVectorProto`` TenSEAL loads; decrypt with :func:`~bcfl_engine.he.decrypt`

    The sum of ``n`` ciphertexts decrypts within ``sum_i |w_i| * precision`` of the plaintext
    weighted sum (``precision`` of the preset), as long as it stays within the preset's headroom.
    """
    if len(payloads) == 0:
        raise InvalidArgument("aggregate needs at least one payload")
    if isinstance(payloads[0], (list, tuple)):
        width = len(payloads[0])
        if any(not isinstance(p, (list, tuple)) or len(p) != width for p in payloads):
            raise InvalidArgument(f"every client must send {width} payloads")
        kw = dict(
            context=context,
            frac_bits=frac_bits,
            backend=backend,
            codec=codec,
            block=block,
            fused=fused,
        )
        return [
            aggregate([p[j] for p in payloads], weights, client_ids=client_ids, **kw)
            for j in range(width)
        ]
    n = len(payloads)
    ids = list(range(n)) if client_ids is None else list(client_ids)
    if len(ids) != n:
        raise InvalidArgument(f"client_ids must be {n} names; got {len(ids)}")
    if bytes(memoryview(payloads[0])[:4]) == lean_wire.LEAN_MAGIC:
        return aggregate_lean(
            payloads,
            weights,
            context=context,
            backend=backend,
            block=block,
            client_ids=ids,
            fused=fused,
        )
    if fused is not False and fused_path(backend, codec):
        return _aggregate_fused(payloads, weights, context, frac_bits, ids)
    block_ids, block_blobs = ids[:1], payloads[:1]
    batch = CiphertextBatch(context, 1, codec=codec)
    batch.add(ids[0], payloads[0])  # fixes and checks the layout
    layout: wire.Layout = batch.layout  # type: ignore[assignment]
    ints, scale = integer_weights(weights, n, layout, frac_bits)
    per_client = 8 * 2 * layout.ciphertexts * layout.residues * layout.poly_degree
    step = block or max(1, min(n, BLOCK_BYTES // per_client))
    device = "cuda" if backend in (None, "triton") and torch.cuda.is_available() else "cpu"
    acc: torch.Tensor | None = None
    versions = list(batch.versions)
    start = 1
    if step > 1 and n > 1:  # the first block: the first payload is already in row 0
        big = CiphertextBatch(context, step, layout=layout, codec=batch.codec)
        big.data[0].copy_(batch.data[0])  # type: ignore[index]
        big.client_ids.append(ids[0])
        big.versions.extend(batch.versions)
        batch = big
        block_ids, block_blobs = ids[1:step], payloads[1:step]
        batch.add_many(list(zip(block_ids, block_blobs, strict=True)))
        start = step
    while True:
        x = batch.residues.to(device, non_blocking=True)
        first = start - len(batch)
        w = None if ints is None else ints[first:start]
        acc = ckks_sum(x, layout.primes, w, acc=acc, backend=backend)
        versions += batch.versions
        if start >= n:
            break
        if batch.capacity < step:
            batch = CiphertextBatch(context, step, layout=layout, codec=batch.codec)
        batch.reset()
        batch.add_many(
            list(zip(ids[start : start + step], payloads[start : start + step], strict=True))
        )
        start += len(batch)
    assert acc is not None
    version = next((v for v in versions if v), (4, 3))
    return to_tenseal(acc, layout, scale, version, batch.codec)
