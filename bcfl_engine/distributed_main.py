"""``python -m bcfl_engine.distributed``: a smoke run and benchmark of the distributed aggregate.

Under ``torchrun --nproc-per-node N -m bcfl_engine.distributed --clients 1000 --dim 1000000
--rule median`` every rank makes its own rows (synthetic, row ``i`` from seed ``seed + i``, so any
world size aggregates the same matrix), aggregates them with
:func:`bcfl_engine.distributed.aggregate` over gloo, and rank 0 prints one JSON line: the
slowest rank's time, each rank's peak RSS and peak anonymous memory, the bytes each rank
sent, and the result's SHA-256 (runs on any number of ranks must print the same). ``--check``
also aggregates the whole matrix in one process on rank 0 and reports whether the bits agree
(it holds all ``n * d`` values: small sizes only). Without ``torchrun`` it runs as one rank.

``--mmap PATH`` reads the rows from a file of ``n x d`` little-endian float32 (row-major,
written once by :func:`write_rows_file`) instead: each rank maps only its own rows
(``np.memmap`` at their offset), so its updates are page cache, not its own memory, and peak
anonymous memory (``RssAnon``, sampled) shows what the aggregate itself holds: the column
shard and the all-to-all buffers. Peak RSS also counts the mapped pages the rank touched.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import resource
import socket
import threading
import time
import warnings
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist


def _rows(a: int, b: int, d: int, seed: int) -> torch.Tensor:
    """Rows ``[a, b)`` of the synthetic round: a shared component plus per-client noise."""
    out = torch.empty(b - a, d)
    for i in range(a, b):
        g = torch.Generator().manual_seed(seed + i)
        torch.randn(d, generator=g, out=out[i - a])
    return out.mul_(0.1).add_(1.0)


def write_rows_file(path: str | os.PathLike[str], n: int, d: int, seed: int = 0) -> None:
    """Write the synthetic round's ``n x d`` float32 rows (:func:`_rows`) to ``path``, a
    block of rows at a time (memory: ``64 MiB`` of rows, not ``4 n d`` bytes)."""
    step = max(1, (64 << 20) // (4 * d))
    with open(path, "wb") as fh:
        for a in range(0, n, step):
            b = min(n, a + step)
            fh.write(_rows(a, b, d, seed).numpy().astype("<f4", copy=False).tobytes())


def _mapped_rows(path: str, a: int, b: int, n: int, d: int) -> torch.Tensor:
    """Rows ``[a, b)`` of the ``n x d`` float32 file at ``path``, mapped read-only."""
    size = Path(path).stat().st_size
    if size != 4 * n * d:
        raise SystemExit(f"--mmap {path}: {size} bytes is not {n} x {d} float32 ({4 * n * d})")
    if b == a:
        return torch.empty(0, d)
    arr = np.memmap(path, dtype="<f4", mode="r", offset=4 * a * d, shape=(b - a, d))
    with warnings.catch_warnings():  # read-only: the aggregate only reads its rows
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(arr)


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


class AnonPeak:
    """The peak of this process's anonymous resident memory (``RssAnon``), sampled every
    ``interval`` seconds by a thread (Linux; 0 elsewhere)."""

    def __init__(self, interval: float = 0.02) -> None:
        self.base_kib = self.peak_kib = self._now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(interval,), daemon=True)
        self._thread.start()

    @staticmethod
    def _now() -> int:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("RssAnon:"):
                    return int(line.split()[1])
        except OSError:
            pass
        return 0

    def _run(self, interval: float) -> None:
        while not self._stop.wait(interval):
            self.peak_kib = max(self.peak_kib, self._now())

    def stop(self) -> float:
        """Stop sampling; the peak in MiB."""
        self._stop.set()
        self._thread.join()
        self.peak_kib = max(self.peak_kib, self._now())
        return self.peak_kib / 1024


def _init(timeout_s: float, backend: str = "gloo") -> torch.device:
    """Join the group torchrun describes (or make a group of one); the device of its tensors.
    NCCL: each rank on the GPU of its ``LOCAL_RANK`` (untested on GPUs, see
    :mod:`bcfl_engine.distributed_comm`)."""
    device = torch.device("cpu")
    if backend == "nccl":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if "RANK" in os.environ:
        dist.init_process_group(backend, timeout=timedelta(seconds=timeout_s))
        return device
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    dist.init_process_group(
        backend,
        init_method=f"tcp://127.0.0.1:{port}",
        rank=0,
        world_size=1,
        timeout=timedelta(seconds=timeout_s),
    )
    return device


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, aggregate over the launched ranks, print the JSON report on rank 0."""
    ap = argparse.ArgumentParser(prog="python -m bcfl_engine.distributed")
    # Not --n / --d: torchrun's own parser reads them as abbreviations of its options.
    ap.add_argument("--clients", "-n", dest="n", type=int, default=1000)
    ap.add_argument("--dim", "-d", dest="d", type=int, default=1_000_000)
    ap.add_argument("--rule", default="median")
    ap.add_argument("--f", type=int, default=0)
    ap.add_argument("--backend", default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads per rank (0: keep)")
    ap.add_argument("--timeout", type=float, default=300.0, help="gloo timeout, seconds")
    ap.add_argument("--check", action="store_true", help="compare with one process (rank 0)")
    ap.add_argument("--repeats", type=int, default=1, help="aggregate this many times")
    ap.add_argument("--mmap", default=None, help="read the rows from this n x d float32 file")
    ap.add_argument(
        "--dist-backend",
        choices=("gloo", "nccl"),
        default="gloo",
        help="the process group's backend: gloo (CPU) or nccl (one GPU per rank)",
    )
    args = ap.parse_args(argv)
    from . import aggregate as aggregate_one
    from .distributed import aggregate

    if args.threads:
        torch.set_num_threads(args.threads)
    device = _init(args.timeout, args.dist_backend)
    rank, world = dist.get_rank(), dist.get_world_size()
    base = _peak_rss_mib()
    anon = AnonPeak()
    a, b = row_ranges(args.n, world)[rank]
    if args.mmap:
        x = _mapped_rows(args.mmap, a, b, args.n, args.d)
    else:
        x = _rows(a, b, args.d, args.seed)
    x = x.to(device)  # NCCL: the rows on this rank's GPU (a copy); gloo: as they are
    # Warm-up on one block of columns: gloo connects pairs on first use, not timed here.
    aggregate(x[:, :256].contiguous(), rule="mean")
    times = []
    for _ in range(args.repeats):  # the fastest run is reported, and every run's time
        dist.barrier()
        start = time.perf_counter()
        stats: dict[str, float] = {}
        out = aggregate(x, rule=args.rule, f=args.f, backend=args.backend, stats=stats)
        times.append(time.perf_counter() - start)
    mine = {
        "seconds": min(times),
        "all_seconds": times,
        "base_rss_mib": base,
        "peak_rss_mib": _peak_rss_mib(),
        "peak_anon_mib": anon.stop(),
        "peak_cuda_mib": torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else 0,
        "base_anon_mib": anon.base_kib / 1024,
        "rows": b - a,
        "sent_mib": stats.pop("sent_bytes") / 2**20,
        **stats,
    }
    every: list[object] = [None] * world
    dist.all_gather_object(every, mine)
    if rank == 0:
        ranks = [e for e in every if isinstance(e, dict)]
        slowest = [max(t) for t in zip(*(r["all_seconds"] for r in ranks), strict=True)]
        report = {
            "ranks": world,
            "threads": torch.get_num_threads(),
            "n": args.n,
            "d": args.d,
            "rule": args.rule,
            # Per repeat the slowest rank's time; the fastest repeat.
            "all_seconds": slowest,
            "seconds": min(slowest),
            "mmap": bool(args.mmap),
            "result_sha256": hashlib.sha256(out.cpu().numpy().tobytes()).hexdigest(),
            "per_rank": ranks,
        }
        if args.check:
            full = (
                _mapped_rows(args.mmap, 0, args.n, args.n, args.d)
                if args.mmap
                else _rows(0, args.n, args.d, args.seed)
            )
            want = aggregate_one(full.to(device), rule=args.rule, f=args.f, backend=args.backend)
            report["identical"] = bool(torch.equal(out, want))
        print(json.dumps(report), flush=True)
    dist.destroy_process_group()


def row_ranges(n: int, world: int) -> list[tuple[int, int]]:
    """Rows per rank for the synthetic round: ``n // world`` each, the first ``n % world`` one
    more (a round's real shards are whatever each ingest node received)."""
    base, extra = divmod(n, world)
    out, start = [], 0
    for r in range(world):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out
