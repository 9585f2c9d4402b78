"""The aggregate of a round described by its committed metadata: the one computation that
:meth:`~bcfl_engine.round.AggregationRound.finalize` runs and :func:`~bcfl_engine.audit.audit`
runs again, so that both give the same bits."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from . import rules
from .aggregate import aggregate
from .protocol import encode_update


def round_aggregate(
    meta: dict[str, Any],
    inputs: Any,
    weights: Sequence[int],
    he_context: bytes | None,
    norms: Any = None,
    noise: Any = None,
) -> tuple[Any, bytes]:
    """``(update, result bytes)`` of a round described by ``meta``, from ``inputs``: the
    ``[n, d]`` plaintext updates, or the clients' ciphertext bytes. The one computation that
    :meth:`~bcfl_engine.round.AggregationRound.finalize` and :func:`audit` share. ``norms``:
    the rows' norms taken at intake, for a private mean (the same result without them);
    ``noise``: its noise drawn beforehand (:class:`~bcfl_engine.dp.PreparedNoise`)."""
    if meta["secure"] == "ckks":
        from . import he

        blob = he.aggregate(list(inputs), weights=list(weights), context=he_context)
        return blob, bytes(blob)
    if meta.get("dp") is not None:  # the private mean (fresh noise): never bit for bit
        from .round_dp import private_aggregate

        out = private_aggregate(meta, inputs, norms, noise)
        return out, encode_update(out)
    return rule_aggregate(meta, inputs, weights)


def rule_aggregate(meta: dict[str, Any], x: Any, weights: Sequence[int]) -> tuple[Any, bytes]:
    """``(update, result bytes)`` of ``meta``'s rule over the plaintext rows ``x`` ``[n, d]``:
    a plaintext round's updates, or a bucketed secure round's bucket means."""
    info = rules.get(meta["rule"])
    w = torch.tensor(weights, dtype=torch.float64) if info.weighted else None
    pre = [p if isinstance(p, str) else (p[0], p[1]) for p in meta["pre"]]
    out = aggregate(
        x,
        rule=meta["rule"],
        f=meta["f"],
        weights=w,
        backend=meta["backend"],
        pre=pre,
        **meta["params"],
    )
    return out, encode_update(out)
