"""The collectives of :mod:`bcfl_engine.distributed`: shard bookkeeping, row shards to column
shards, column shards back to one vector.

Layout. Rank ``r`` of ``W`` holds rows ``[offset_r, offset_r + n_r)`` of the round's ``[n, d]``
matrix (its clients, in the order it received them; ranks in rank order give the global
order). Columns are split in ``W`` contiguous ranges of whole 256-column blocks
(:func:`column_ranges`). After :func:`to_columns` rank ``r`` holds all ``n`` rows of its column
range, rows in global order: a coordinate-wise rule on it gives exactly the columns the
single-process rule gives, since no rule mixes columns.

Every collective goes through :func:`collective`, which turns a transport failure (a peer that
died, a timeout of the process group) into :class:`~bcfl_engine.errors.PeerFailure`.

Device. The group's backend says where the tensors of the collectives live
(:func:`comm_device`): gloo, the CPU path, moves CPU tensors; NCCL moves tensors on the rank's
current CUDA device (``torch.cuda.set_device(local_rank)`` before the group is made). Every
buffer here is allocated on ``Layout.device``. The NCCL path is written for GPUs but has only
been run on CPUs through its selection logic (:func:`device_for_backend`): it is untested on
GPUs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from .errors import BackendUnavailable, InvalidArgument, PeerFailure

T = TypeVar("T")

# Bytes of the send buffer of one all-to-all round: the row shard is sent in column blocks, so a
# rank never holds a second full copy of its rows (32 MiB: a few rounds at n=200, d=200k).
SEND_BYTES = 32 << 20
# Column ranges start at multiples of 256: torch's vectorised reductions over rows (the torch
# reference of the mean, the trimmed mean's float64 mean) add a column's rows in an order that
# depends on the column's place in its vector group; on ranges aligned to 32 columns or more
# every column came out the same bits as in the whole matrix (tested at n up to 1000, d up to
# 70001, 1 and 2 threads), 8 and 16 did not. 256 leaves room for wider vectors (AVX-512).
# A range is never narrower than 256 columns either: a 1-column shard [n, 1] is reduced by
# torch as a contiguous vector, in another order (measured: 1 column of 257 differed).
# The native kernels need no alignment (each column is summed in row order wherever it is).
COLUMN_ALIGN = 256
CPU = torch.device("cpu")


def collective(step: str, group: Any, fn: Callable[[], T]) -> T:
    """``fn()``, a collective; a transport error becomes PeerFailure naming ``step``."""
    try:
        return fn()
    except (RuntimeError, ConnectionError, TimeoutError) as exc:
        rank, world = dist.get_rank(group), dist.get_world_size(group)
        raise PeerFailure(
            f"distributed aggregate: {step} failed on rank {rank} of {world} (a rank died or "
            f"did not answer within the process group's timeout): {exc}"
        ) from exc


def device_for_backend(backend: str, cuda_available: bool, current: int) -> torch.device:
    """The device of the collectives of a group whose backend is ``backend`` (as
    ``dist.get_backend`` names it: "gloo", "nccl", or per device "cpu:gloo,cuda:nccl").

    NCCL (alone, or beside gloo): ``cuda:current``, BackendUnavailable without CUDA; gloo
    alone: the CPU; any other backend (MPI, UCC, ...): InvalidArgument, it is not one this
    module was written for.
    """
    parts = {p.rpartition(":")[2] for p in str(backend).lower().split(",")}
    if "nccl" in parts:
        if not cuda_available:
            raise BackendUnavailable(
                f"distributed aggregate: the group's backend {backend!r} moves CUDA tensors, "
                "and torch sees no CUDA device"
            )
        return torch.device("cuda", current)
    if parts == {"gloo"}:
        return torch.device("cpu")
    raise InvalidArgument(
        f"distributed aggregate: process group backend {backend!r} not supported; "
        "gloo (CPU tensors) or nccl (CUDA tensors)"
    )


def comm_device(group: Any) -> torch.device:
    """Where this rank's tensors must be for the collectives of ``group``
    (:func:`device_for_backend` of its backend)."""
    cuda = torch.cuda.is_available()
    return device_for_backend(
        str(dist.get_backend(group)), cuda, torch.cuda.current_device() if cuda else 0
    )


def column_ranges(d: int, world: int, align: int = COLUMN_ALIGN) -> list[tuple[int, int]]:
    """``[start, stop)`` of each rank's columns: ``d // align`` whole blocks (at least one)
    shared out, the first ranks one block more, the ``d % align`` tail columns added to the
    last block. So every range starts at a multiple of ``align`` and is at least that wide, or
    is all of ``d``; ranks beyond the number of blocks get none."""
    blocks = max(1, d // align)
    base, extra = divmod(blocks, world)
    out, start = [], 0
    for r in range(world):
        stop = start + (base + (1 if r < extra else 0)) * align
        stop = d if stop >= blocks * align else stop
        out.append((start, stop))
        start = stop
    return out


@dataclass(frozen=True)
class Layout:
    """Who holds what: rows per rank (global order = rank order), columns per rank."""

    counts: tuple[int, ...]
    d: int
    dtype: torch.dtype
    rank: int
    align: int = COLUMN_ALIGN
    device: torch.device = CPU

    @property
    def world(self) -> int:
        return len(self.counts)

    @property
    def n(self) -> int:
        return sum(self.counts)

    @property
    def offsets(self) -> tuple[int, ...]:
        out, acc = [], 0
        for c in self.counts:
            out.append(acc)
            acc += c
        return tuple(out)

    @property
    def columns(self) -> list[tuple[int, int]]:
        return column_ranges(self.d, self.world, self.align)

    @property
    def my_columns(self) -> tuple[int, int]:
        return self.columns[self.rank]


def to_columns(rows: torch.Tensor, layout: Layout, group: Any, send_bytes: int = SEND_BYTES):
    """Rank ``r``'s column shard ``[n, c_r]`` of the round from every rank's row shard.

    Streams in rounds of ``block`` columns of every destination's range, through one send and
    one receive buffer of at most ``send_bytes`` each, reused every round: a rank holds its
    rows, its column shard and those two buffers, never a second copy of its rows. Each round
    is one ``all_to_all_single`` of bytes (gloo moves any dtype so) with uneven splits.
    """
    world, rank = layout.world, layout.rank
    if world == 1:
        return rows.contiguous()  # one rank holds every row and every column: no copy
    cols = layout.columns
    c0, c1 = cols[rank]
    esize = torch.empty((), dtype=layout.dtype).element_size()
    out = torch.empty(layout.n, c1 - c0, dtype=layout.dtype, device=layout.device)
    widest = max(b - a for a, b in cols)
    if widest == 0:
        return out
    # The same block on every rank (from the largest shard): every rank runs the same rounds.
    per_col = max(1, max(layout.counts) * world * esize)
    block = max(1, min(widest, send_bytes // per_col))
    offsets = layout.offsets
    n_r = rows.shape[0]
    send_buf = torch.empty(n_r * block * world, dtype=layout.dtype, device=layout.device)
    recv_buf = torch.empty(layout.n * block, dtype=layout.dtype, device=layout.device)
    for t0 in range(0, widest, block):
        in_splits, at = [], 0
        for a, b in cols:
            lo, hi = min(b, a + t0), min(b, a + t0 + block)
            size = n_r * (hi - lo)
            send_buf[at : at + size].view(n_r, hi - lo).copy_(rows[:, lo:hi])
            in_splits.append(size * esize)
            at += size
        send = send_buf[:at].view(torch.uint8)
        lo, hi = min(c1, c0 + t0), min(c1, c0 + t0 + block)
        width = hi - lo
        out_splits = [cnt * width * esize for cnt in layout.counts]
        recv = recv_buf[: layout.n * width].view(torch.uint8)
        collective(
            "all-to-all of column blocks",
            group,
            partial(dist.all_to_all_single, recv, send, out_splits, in_splits, group=group),
        )
        at = 0
        for src, cnt in enumerate(layout.counts):
            if cnt and width:
                piece = recv_buf[at : at + cnt * width].view(cnt, width)
                out[offsets[src] : offsets[src] + cnt, lo - c0 : hi - c0] = piece
            at += cnt * width
    return out


def gather_columns(local: torch.Tensor, layout: Layout, group: Any) -> torch.Tensor:
    """The full float32 ``[d]`` result from each rank's ``[c_r]`` columns, on every rank."""
    cols = layout.columns
    widest = max(b - a for a, b in cols)
    padded = torch.zeros(widest, dtype=torch.float32, device=layout.device)
    padded[: local.numel()] = local
    parts = [torch.empty(widest, dtype=torch.float32, device=layout.device) for _ in cols]
    collective(
        "all-gather of the result", group, lambda: dist.all_gather(parts, padded, group=group)
    )
    return torch.cat([p[: b - a] for p, (a, b) in zip(parts, cols, strict=True)])


def peer(group: Any, r: int) -> int:
    """The global rank of rank ``r`` of ``group`` (point-to-point calls take global ranks)."""
    return r if group is None else int(dist.get_global_rank(group, r))


def fold_in_rank_order(acc: torch.Tensor, parts: list[torch.Tensor], group: Any) -> torch.Tensor:
    """``(((acc + parts of rank 0) + parts of rank 1) + ...)``, one addition at a time in rank
    order, the total on every rank: the left fold one process makes over the same parts.

    Each rank waits for the running sum of the ranks before it, adds its own parts and passes
    it on; the last rank broadcasts the total. The parts are computed before, in parallel; only
    the additions (``W - 1`` messages of ``acc``'s size) run in sequence.
    """
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    acc = acc.clone()
    if rank > 0:
        collective(
            "receive of the running sum",
            group,
            lambda: dist.recv(acc, peer(group, rank - 1), group=group),
        )
    for p in parts:
        acc += p
    if rank < world - 1:
        collective(
            "send of the running sum",
            group,
            lambda: dist.send(acc, peer(group, rank + 1), group=group),
        )
    collective(
        "broadcast of the sum",
        group,
        lambda: dist.broadcast(acc, peer(group, world - 1), group=group),
    )
    return acc


def gather_objects(obj: Any, group: Any, step: str) -> list[Any]:
    """``obj`` of every rank, in rank order (small metadata: pickled)."""
    out: list[Any] = [None] * dist.get_world_size(group)
    collective(step, group, lambda: dist.all_gather_object(out, obj, group=group))
    return out


def sum_in_rank_order(local: torch.Tensor, group: Any, step: str) -> torch.Tensor:
    """The sum of every rank's ``local`` (same shape and dtype), added in rank order on every
    rank: the same bits everywhere, whatever the transport's own reduction order."""
    parts = [torch.empty_like(local) for _ in range(dist.get_world_size(group))]
    collective(step, group, lambda: dist.all_gather(parts, local.contiguous(), group=group))
    acc = parts[0].clone()
    for p in parts[1:]:
        acc += p
    return acc
