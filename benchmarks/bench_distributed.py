"""The distributed aggregate: 1 rank against 2 ranks on this machine, side by side in one run.

Each configuration is one ``torchrun`` of ``python -m bcfl_engine.distributed`` (gloo on
127.0.0.1) on the same synthetic round; its JSON report gives the slowest rank's time, each
rank's peak RSS (``resource.getrusage``) and the bytes each rank sent in the all-to-all.
Configurations: one rank with all the threads (the single-process engine's setting), one rank
with one thread, and N ranks with one thread each (the same cores as the first). Ratios are
against the one-rank, all-threads run.

    python benchmarks/bench_distributed.py                          # n = 200, d = 200,000
    python benchmarks/bench_distributed.py --n 1000 --d 1000000     # the issue's size

Across hosts the all-to-all is the cost that grows: each rank sends ``n_r * d * (W - 1) / W``
values and receives as much, so a round moves ``n * d * (W - 1) / W * 4`` bytes in total
(about ``4 n d`` bytes: 4 GB at n = 1000, d = 1M), plus ``4 d`` per rank for the result and
``8 n^2`` per rank for Krum's distances.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(ranks: int, threads: int, n: int, d: int, rule: str, f: int) -> dict[str, Any]:
    """One torchrun of the entry point; its JSON report."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "bcfl_engine.distributed", "--clients", str(n), "--dim", str(d),
        "--rule", rule, "--f", str(f), "--threads", str(threads),
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=200_000)
    ap.add_argument("--rule", default="median")
    ap.add_argument("--f", type=int, default=0)
    ap.add_argument("--ranks", type=int, default=2)
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    configs = [(1, cores), (1, 1), (args.ranks, max(1, cores // args.ranks))]
    rows = [(r, t, run(r, t, args.n, args.d, args.rule, args.f)) for r, t in configs]
    base = rows[0][2]
    data_mib = args.n * args.d * 4 / 2**20
    print(
        f"{args.rule}, n={args.n}, d={args.d} ({data_mib:.0f} MiB of float32 updates), "
        f"{cores} cores; ratios against 1 rank x {cores} threads"
    )
    print(
        f"{'ranks x threads':>16} {'time ratio':>11} {'peak RSS/rank ratio':>20} "
        f"{'(peak - import)/rank ratio':>27} {'sent/rank, of data':>19} "
        f"{'all-to-all share':>17} {'rule time ratio':>16}"
    )
    b_rule = max(r["rule_s"] for r in base["per_rank"])
    b_peak = max(r["peak_rss_mib"] for r in base["per_rank"])
    b_work = max(r["peak_rss_mib"] - r["base_rss_mib"] for r in base["per_rank"])
    for ranks, threads, rep in rows:
        peak = max(r["peak_rss_mib"] for r in rep["per_rank"])
        work = max(r["peak_rss_mib"] - r["base_rss_mib"] for r in rep["per_rank"])
        sent = max(r["sent_mib"] for r in rep["per_rank"]) / data_mib
        a2a = max(r["all_to_all_s"] for r in rep["per_rank"]) / rep["seconds"]
        rule_s = max(r["rule_s"] for r in rep["per_rank"])
        print(
            f"{f'{ranks} x {threads}':>16} {rep['seconds'] / base['seconds']:>11.2f} "
            f"{peak / b_peak:>20.2f} {work / b_work:>27.2f} {sent:>19.2f} "
            f"{a2a:>17.2f} {rule_s / b_rule:>16.2f}"
        )
    print("json:", json.dumps([{"ranks": r, "threads": t, **rep} for r, t, rep in rows]))


if __name__ == "__main__":
    main()
