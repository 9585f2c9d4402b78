"""The round pipeline and the Flower strategies, side by side in one run on the same updates.

1. Flower's Message API strategies (``flwr.serverapp.strategy``: FedAvg, FedMedian,
   FedTrimmedAvg, Krum) against :class:`~bcfl_engine.integrations.flower.EngineFedAvg` with the
   same rule, on the same ``n`` replies of a ``d``-parameter model (4 arrays), timing
   ``aggregate_train`` (reply checks, array conversion and the aggregate). Each repeat runs
   both on fresh replies, back to back in alternating order, after a warm-up; ``flower x``
   is the median over repeats of Flower's time over the engine's, so that load from other
   processes on a shared machine falls on both sides of each ratio.
2. The signed durable round (:mod:`durable`): ``AggregationRound.submit_many`` of every
   payload and ``finalize``, split into its parts, against the floor of the same bytes (one
   sequential write + fsync, one bare commit transaction, the bare aggregate) measured in the
   same run.
3. The same at scale: 10,000 signed updates of 16 KiB and 1,000 of 1 MiB (submits per second).

    python benchmarks/bench_round.py                  # n=32, d=262144 (1 MiB per update)
    python benchmarks/bench_round.py --quick --no-scale   # n=16, d=4099
    python benchmarks/bench_round.py --part flower    # section 1 only (or --part round: 2, 3)
"""

from __future__ import annotations

import argparse
import gc
import logging
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from durable import durable_round, report


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


def paired(
    theirs: Callable[[Any], Any],
    ours: Callable[[Any], Any],
    setup: Callable[[], Any],
    repeats: int,
    warmup: int = 2,
) -> tuple[float, float, float]:
    """Median seconds of ``theirs(setup())`` and ``ours(setup())``, and the median of their
    per-repeat ratio (theirs / ours).

    The two run back to back in each repeat, in alternating order, each on a fresh setup
    (untimed, garbage collected before the clock starts), after ``warmup`` untimed rounds of
    each: on a machine shared with other processes both sides of a ratio see the same load.
    """
    for _ in range(warmup):
        theirs(setup())
        ours(setup())
    t_theirs, t_ours, ratios = [], [], []
    for r in range(repeats):
        times = {}
        for side in ("theirs", "ours") if r % 2 == 0 else ("ours", "theirs"):
            fn = theirs if side == "theirs" else ours
            arg = setup()
            gc.collect()
            t0 = time.perf_counter()
            fn(arg)
            times[side] = time.perf_counter() - t0
        t_theirs.append(times["theirs"])
        t_ours.append(times["ours"])
        ratios.append(times["theirs"] / times["ours"])
    return statistics.median(t_theirs), statistics.median(t_ours), statistics.median(ratios)


def flower_vs_engine(x: torch.Tensor, repeats: int) -> list[tuple[str, float, float, float]]:
    """Per rule: Flower's median time, the engine's, and the median per-repeat ratio."""
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
        got = paired(
            lambda m, s=theirs: s.aggregate_train(1, m),
            lambda m, s=ours: s.aggregate_train(1, m),
            lambda: replies(x),
            repeats,
        )
        rows.append((rule, *got))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=32)
    parser.add_argument("--d", type=int, default=262_144)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--flower-repeats", type=int, default=9, help="paired repeats of section 1 (default 9)"
    )
    parser.add_argument("--quick", action="store_true", help="n=16, d=4099")
    parser.add_argument(
        "--scale",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also the rounds of 10,000 x 16 KiB and 1,000 x 1 MiB updates",
    )
    parser.add_argument(
        "--part", choices=("all", "flower", "round"), default="all", help="sections to run"
    )
    args = parser.parse_args()
    n, d = (16, 4099) if args.quick else (args.n, args.d)
    x = torch.from_numpy(np.random.default_rng(0).standard_normal((n, d), dtype=np.float32))
    print(
        f"n={n} d={d} float32 ({x.numel() * 4 / 2**20:.1f} MiB of updates), median of {args.repeats}"
    )
    if args.part in ("all", "flower"):
        from flwr.common.logger import FLOWER_LOGGER

        # Flower logs a line per aggregate_train: quiet it while timing.
        FLOWER_LOGGER.setLevel(logging.WARNING)
        print(
            f"\n1. aggregate_train: Flower's strategy vs EngineFedAvg, same replies "
            f"({args.flower_repeats} paired repeats, alternating order; x: median of ratios)"
        )
        print(f"  {'rule':<14} {'flower ms':>10} {'engine ms':>10} {'flower x':>9}")
        for rule, t_f, t_e, ratio in flower_vs_engine(x, args.flower_repeats):
            print(f"  {rule:<14} {1e3 * t_f:>10.2f} {1e3 * t_e:>10.2f} {ratio:>9.1f}")
    if args.part == "flower":
        return
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
