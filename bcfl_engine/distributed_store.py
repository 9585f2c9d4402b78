"""A rank's rows of a round, read from the round's payload store.

Each rank of :func:`bcfl_engine.distributed.aggregate` holds the updates of the clients it
received. When those are the accepted payloads of an
:class:`~bcfl_engine.round.AggregationRound` (as ingest stored them: the round's log in a
:class:`~bcfl_engine.store.PayloadStore`), :func:`load_rows` reads the payloads of the
clients a rank holds, checks each against its recorded digest and copies it once into the
rank's ``[n_r, d]`` row shard, with the records' weights and client ids.

Rows come in the round's order (its records by ``seq``, the order in which the round's own
batch holds them), restricted to the rank's clients: ranks that hold consecutive runs of that
order, in rank order, give the round's matrix, so the distributed aggregate is the round's.
The store is only read (a path is opened ``readonly``): a rank that dies while reading or
aggregating changes no stored byte.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from . import protocol
from .errors import InvalidArgument, PayloadError
from .records import check_acceptance
from .store import PayloadStore


@dataclass(frozen=True)
class StoredRows:
    """A rank's row shard from a store: ``x`` ``[n_r, d]`` float32, ``weights`` ``[n_r]``
    float64 (the records' integer weights), ``clients`` and ``digests`` (hex) per row."""

    x: torch.Tensor
    weights: torch.Tensor
    clients: list[str]
    digests: list[str]


def round_clients(
    store: PayloadStore | str | os.PathLike[str], task: object, round: int
) -> list[str]:
    """The clients of ``round`` of ``task`` in the round's order (its records by ``seq``)."""
    return [r["client"] for r in _records(_open(store), task, round)]


def load_rows(
    store: PayloadStore | str | os.PathLike[str],
    task: object,
    round: int,
    dim: int,
    clients: Sequence[str] | None = None,
) -> StoredRows:
    """The plaintext updates of ``clients`` (None: every client) accepted in ``round`` of
    ``task`` (the task's folder name, ``AggregationRound.key``), in the round's order.

    Each payload is hashed and compared with its record's digest before it is used
    (PayloadError if the bytes were altered or are missing); InvalidArgument for a client the
    round did not accept; ShapeMismatch for a payload that is not ``dim`` float32 values.
    """
    if not isinstance(dim, int) or isinstance(dim, bool) or dim <= 0:
        raise InvalidArgument(f"dim must be a positive int; got {dim!r}")
    st = _open(store)
    records = _records(st, task, round)
    if clients is not None:
        if isinstance(clients, (str, bytes)):
            raise InvalidArgument("clients is a list of client addresses; got one string")
        wanted = {str(c).lower() for c in clients}
        if len(wanted) != len(clients):
            raise InvalidArgument("clients: a client is named twice")
        missing = wanted - {r["client"] for r in records}
        if missing:
            raise InvalidArgument(
                f"round {round} of task {task} accepted no payload from {sorted(missing)}"
            )
        records = [r for r in records if r["client"] in wanted]
    x = torch.empty(len(records), dim, dtype=torch.float32)
    for i, rec in enumerate(records):
        data = st.payload(task, round, rec["digest"], hasher=protocol.payload_digest)
        x[i] = protocol.update_view(data, dim)
    return StoredRows(
        x,
        torch.tensor([int(r["weight"]) for r in records], dtype=torch.float64),
        [r["client"] for r in records],
        [r["digest"] for r in records],
    )


def _open(store: PayloadStore | str | os.PathLike[str]) -> PayloadStore:
    return store if isinstance(store, PayloadStore) else PayloadStore(store, readonly=True)


def _records(st: PayloadStore, task: object, round: int) -> list[dict[str, Any]]:
    records = [check_acceptance(r) for r in st.accepted(task, round)]
    if not records:
        raise PayloadError(f"store {st.root}: round {round} of task {task} has no record")
    return sorted(records, key=lambda r: int(r["seq"]))
