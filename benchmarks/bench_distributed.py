"""The distributed aggregate: 1 rank against N ranks on this machine, side by side in one run.

Each configuration is one ``torchrun`` of ``python -m bcfl_engine.distributed`` (gloo on
127.0.0.1) on the same synthetic round; its JSON report gives the slowest rank's time, each
rank's peak RSS (``resource.getrusage``) and peak anonymous memory (sampled ``RssAnon``), the
bytes each rank sent in the all-to-all and the result's SHA-256. Each run aggregates ``--repeats`` times (the fastest kept; "spread" is slowest / fastest).
Configurations: one rank with
all the threads (the single-process engine's setting), one rank with one thread, and N ranks
with ``cores / N`` threads each (the same cores as the first). Ratios are against the one-rank,
all-threads run; every configuration must give the same result bits (checked, printed).

    python benchmarks/bench_distributed.py                          # n = 200, d = 200,000
    python benchmarks/bench_distributed.py --n 1000 --d 1000000     # the issue's size
    python benchmarks/bench_distributed.py --n 200 --d 10000000 --mmap /var/tmp

``--mmap DIR`` writes the round once to ``DIR`` as an ``n x d`` float32 file, each rank maps
only its rows (page cache, not its own memory) and the file is deleted at the end: the size
that does not fit in memory twice (d = 10M: 8 GB at n = 200).

Across hosts the all-to-all is the cost that grows: rank ``r`` sends ``n_r * d * (W - 1) / W``
values and receives as much, so a round moves ``4 n d (W - 1) / W`` bytes in total (4 GB at
n = 1000, d = 1M on 2 ranks), plus ``4 d`` per rank for the result and ``8 n^2`` per rank for
the distances of Krum-like rules. The script prints the volume it measured and what it implies
for ``W`` hosts on a given link (a model, printed as such: time of the rule on this machine
divided by ``W``, plus each rank's traffic over its link).

Measured on this project's 2-core machine (gloo over loopback, one run each, fastest of 3 or 2
aggregates; 2 ranks x 1 thread against 1 rank x 2 threads, the same result bits everywhere):

- n = 1000, d = 1M in memory, median: time 6.8x (spread 2.1 over repeats), peak RSS per rank
  1.02x (each rank holds its rows and its column shard, 2 GB each); the all-to-all is 83% of
  the time, 0.93 GiB sent per rank at ~0.24 GiB/s; the rule on the shard 1.2x. Mean: 13x
  (the rule itself is 0.14 s against 3.1 s of all-to-all).
- n = 200, d = 10M memory-mapped (7.45 GiB file), median: time 6.1x, peak anonymous memory
  160 MiB above start with 1 rank (it reads the mapped file in place) against 3.9 GiB per rank
  with 2 (the column shard, ``n d / 2``); peak RSS, mapped pages included, 0.99x per rank.

On one machine the second rank only adds the exchange: these rules read their data once, at
memory speed, and the all-to-all moves about all of it. Across hosts the model above gives,
for the d = 10M median, 2.4 s on 2 hosts at 10 Gb/s against 1.5 s on one, and 0.9 s (2),
0.5 s (4), 0.26 s (8) at 100 Gb/s: the distributed aggregate pays off for capacity (a round
that does not fit one host) and, for speed, on fast links or rules with more work per byte.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    ranks: int, threads: int, n: int, d: int, rule: str, f: int, mmap: str | None, repeats: int
) -> dict[str, Any]:
    """One torchrun of the entry point; its JSON report."""
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "bcfl_engine.distributed", "--clients", str(n), "--dim", str(d),
        "--rule", rule, "--f", str(f), "--threads", str(threads), "--timeout", "1800",
        "--repeats", str(repeats),
    ]  # fmt: skip
    if mmap:
        cmd += ["--mmap", mmap]
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
    if done.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))


def _most(rep: dict[str, Any], key: str) -> float:
    return max(float(r[key]) for r in rep["per_rank"])


def _work(rep: dict[str, Any]) -> float:
    """The largest anonymous memory a rank added after its start (imports, not rows)."""
    return max(float(r["peak_anon_mib"]) - float(r["base_anon_mib"]) for r in rep["per_rank"])


def table(rule: str, n: int, d: int, cores: int, rows: list[tuple[int, int, dict[str, Any]]]):
    """Print the ratios of every configuration against the first; True if all bits agree."""
    base = rows[0][2]
    data_mib = n * d * 4 / 2**20
    print(
        f"\n{rule}, n={n}, d={d} ({data_mib:.0f} MiB of float32 updates"
        f"{', memory-mapped' if base.get('mmap') else ''}), {cores} cores; "
        f"ratios against 1 rank x {cores} threads ({base['seconds']:.2f} s, "
        f"peak anon {_most(base, 'peak_anon_mib'):.0f} MiB, {_work(base):.0f} MiB above start)"
    )
    print(
        f"{'ranks x threads':>16} {'time':>6} {'spread':>7} {'peak RSS/rank':>14} "
        f"{'peak anon/rank':>15} "
        f"{'anon above start, MiB':>22} "
        f"{'sent/rank of data':>18} {'all-to-all share':>17} {'rule time':>10} {'same bits':>10}"
    )
    same = True
    for ranks, threads, rep in rows:
        agree = rep["result_sha256"] == base["result_sha256"]
        same = same and agree
        print(
            f"{f'{ranks} x {threads}':>16} {rep['seconds'] / base['seconds']:>6.2f} "
            f"{max(rep['all_seconds']) / min(rep['all_seconds']):>7.2f} "
            f"{_most(rep, 'peak_rss_mib') / _most(base, 'peak_rss_mib'):>14.2f} "
            f"{_most(rep, 'peak_anon_mib') / _most(base, 'peak_anon_mib'):>15.2f} "
            f"{_work(rep):>22.0f} "
            f"{_most(rep, 'sent_mib') / data_mib:>18.2f} "
            f"{_most(rep, 'all_to_all_s') / rep['seconds']:>17.2f} "
            f"{_most(rep, 'rule_s') / _most(base, 'rule_s'):>10.2f} {agree!s:>10}"
        )
    return same


def projection(n: int, d: int, rows: list[tuple[int, int, dict[str, Any]]]) -> None:
    """The measured all-to-all volume, and the model of W hosts it implies."""
    ranks, _, rep = rows[-1]
    sent = _most(rep, "sent_mib") * 2**20
    a2a_s = _most(rep, "all_to_all_s")
    print(
        f"measured: {ranks} ranks, {sent / 2**30:.2f} GiB sent per rank in {a2a_s:.2f} s "
        f"({sent / max(a2a_s, 1e-9) / 2**30:.2f} GiB/s over loopback, "
        f"model 4 n d (W-1)/W^2 = {4 * n * d * (ranks - 1) / ranks**2 / 2**30:.2f} GiB)"
    )
    rule_s = _most(rows[0][2], "rule_s")  # the rule with all of this machine's cores
    print("model for W hosts like this one (rule time / W + each rank's traffic on its link):")
    for gbit in (10, 100):
        cells = []
        for w in (2, 4, 8, 16):
            per_rank = 4 * n * d * (w - 1) / w**2 + 4 * d  # bytes sent (= received) per rank
            cells.append(f"W={w}: {rule_s / w + per_rank * 8 / (gbit * 1e9):.2f} s")
        print(f"  {gbit:>3} Gb/s: " + ", ".join(cells) + f"  (1 host: {rule_s:.2f} s)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--d", type=int, default=200_000)
    ap.add_argument("--rules", default="median", help="comma-separated rules")
    ap.add_argument("--f", type=int, default=0)
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="aggregates per run (fastest kept)")
    ap.add_argument("--mmap", default=None, help="folder for the memory-mapped round (deleted)")
    ap.add_argument("--json", default=None, help="write every report to this file")
    args = ap.parse_args()
    cores = len(os.sched_getaffinity(0))
    configs = [(1, cores), (1, 1), (args.ranks, max(1, cores // args.ranks))]
    path = None
    if args.mmap:
        from bcfl_engine.distributed_main import write_rows_file

        path = Path(args.mmap) / f"bcfl-rows-{args.n}x{args.d}-{os.getpid()}.f32"
        t0 = time.perf_counter()
        write_rows_file(path, args.n, args.d)
        print(f"wrote {path} ({path.stat().st_size / 2**30:.2f} GiB) in "
              f"{time.perf_counter() - t0:.0f} s")  # fmt: skip
    reports, same = [], True
    try:
        for rule in args.rules.split(","):
            f = 0 if rule == "mean" else args.f
            rows = [
                (
                    r,
                    t,
                    run(r, t, args.n, args.d, rule, f, str(path) if path else None, args.repeats),
                )
                for r, t in configs
            ]
            same = table(rule, args.n, args.d, cores, rows) and same
            projection(args.n, args.d, rows)
            reports += [{"ranks": r, "threads": t, **rep} for r, t, rep in rows]
    finally:
        if path is not None:
            path.unlink(missing_ok=True)
    if args.json:
        Path(args.json).write_text(json.dumps(reports, indent=1))
    print(f"\nevery configuration gave the same bits: {same}")
    sys.exit(0 if same else 1)


if __name__ == "__main__":
    main()
