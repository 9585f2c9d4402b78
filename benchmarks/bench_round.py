"""The round pipeline and the Flower strategies, side by side in one run on the same updates.

1. Flower's Message API strategies (``flwr.serverapp.strategy``: FedAvg, FedMedian,
   FedTrimmedAvg, Krum) against :class:`~bcfl_engine.integrations.flower.EngineFedAvg` with the
   same rule, on the same ``n`` replies of a ``d``-parameter model (4 arrays), timing
   ``aggregate_train`` (reply checks, array conversion and the aggregate). ``flower x`` is
   Flower's time over the engine's.
2. The signed durable round (:mod:`durable`): ``AggregationRound.submit_many`` of every
   payload and ``finalize``, split into its parts, against the floor of the same bytes (one
   sequential write + fsync, one bare commit transaction, the bare aggregate) measured in the
   same run.
3. The same at scale: 10,000 signed updates of 16 KiB and 1,000 of 1 MiB (submits per second).

    python benchmarks/bench_round.py                  # n=32, d=262144 (1 MiB per update)
    python benchmarks/bench_round.py --quick --no-scale   # n=16, d=4099
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from durable import durable_round, report


def timeit(fn: Callable[..., Any], repeats: int, setup: Callable[[], Any] | None = None) -> float:
    """Median seconds of ``fn()`` (or ``fn(setup())``, the setup untimed) over ``repeats``."""
    times = []
    for _ in range(repeats):
        arg = setup() if setup is not None else None
        t0 = time.perf_counter()
        fn() if setup is None else fn(arg)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def replies(x: torch.Tensor) -> list[Any]:
    """Flower replies carrying each row of ``x`` as a 4-array model."""
    from flwr.app import Array, ArrayRecord, Message, Metadata, MetricRecord, RecordDict

    d = x.shape[1]
    cuts = [0, d // 2, 3 * d // 4, d - 7, d]
    out = []
    for i, row in enumerate(x.numpy()):
        arrays = ArrayRecord({f"w{j}": Array(row[cuts[j] : cuts[j + 1]].copy()) for j in range(4)})
        content = RecordDict({"arrays": arrays, "metrics": MetricRecord({"num-examples": 10 + i})})
        meta = Metadata(1, f"m{i}", i + 1, 0, f"i{i}", "1", time.time(), 600.0, "train")
        out.append(Message(content, metadata=meta))
    return out


def flower_vs_engine(x: torch.Tensor, repeats: int) -> list[tuple[str, float, float]]:
    from flwr.serverapp import strategy as fs

    from bcfl_engine.integrations.flower import EngineFedAvg

    n = x.shape[0]
    f = max(1, n // 10)
    beta = f / n
    pairs = [
        ("mean", fs.FedAvg(), EngineFedAvg("mean")),
        ("median", fs.FedMedian(), EngineFedAvg("median")),
        (
            "trimmed_mean",
            fs.FedTrimmedAvg(beta=beta),
            EngineFedAvg("trimmed_mean", f=int(beta * n)),
        ),
        ("krum", fs.Krum(num_malicious_nodes=f), EngineFedAvg("krum", f=f)),
    ]
    rows = []
    for rule, theirs, ours in pairs:
        # Flower's FedMedian and friends empty the replies' ArrayRecords: fresh replies per call.
        t_flower = timeit(lambda m, s=theirs: s.aggregate_train(1, m), repeats, lambda: replies(x))
        t_engine = timeit(lambda m, s=ours: s.aggregate_train(1, m), repeats, lambda: replies(x))
        rows.append((rule, t_flower, t_engine))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--d", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="n=16, d=4099")
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the rounds of 10,000 x 16 KiB and 1,000 x 1 MiB updates",
    )
    args = parser.parse_args()
    n, d = (16, 4099) if args.quick else (args.n, args.d)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, d), dtype=np.float32))
    print(
        f"n={n} d={d} float32 ({x.numel() * 4 / 2**20:.1f} MiB of updates), median of {args.repeats}"
    )
    print("\n1. aggregate_train: Flower's strategy vs EngineFedAvg, same replies")
    print(f"  {'rule':<14} {'flower ms':>10} {'engine ms':>10} {'flower x':>9}")
    for rule, t_f, t_e in flower_vs_engine(x, args.repeats):
        print(f"  {rule:<14} {1e3 * t_f:>10.2f} {1e3 * t_e:>10.2f} {t_f / t_e:>9.1f}")
    print("\n2. The signed durable round (median, embedded chain): submit_many + finalize")
    report(durable_round(x, args.repeats), n)
    if args.scale:
        for sn, sd in ((10_000, 4096), (1_000, 262_144)):
            print(f"\n3. At scale: n={sn:,} signed updates of {4 * sd // 1024:,} KiB (mean), once")
            y = torch.from_numpy(
                np.random.default_rng(1).standard_normal((sn, sd), dtype=np.float32)
            )
            report(durable_round(y, 1, rule="mean"), sn)


if __name__ == "__main__":
    main()
