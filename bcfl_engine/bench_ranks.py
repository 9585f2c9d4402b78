"""``bcfl bench --ranks N``: a rule timed on N gloo processes on this machine, checked bit for
bit against one process.

It launches ``torchrun --nproc-per-node N -m bcfl_engine.distributed`` (the smoke entry point
of :mod:`bcfl_engine.distributed_main`) on 127.0.0.1 with a free port, once per rule and size,
and prints the slowest rank's time, the peak memory and bytes sent per rank, and whether the
result equals the single-process engine's.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Callable, Sequence

from .errors import BcflError

DEFAULT_RULES = ("mean", "median", "trimmed_mean", "krum")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(
    ranks: int,
    n: int,
    d: int,
    rules: Sequence[str],
    f: int = 1,
    echo: Callable[[str], None] = print,
    timeout: float = 3600.0,
) -> bool:
    """Time each rule at ``n x d`` on ``ranks`` processes; True if every result was
    bit-identical to one process. BcflError naming the rule if a run fails."""
    same = True
    for rule in rules:
        rule_f = 0 if rule == "mean" else f
        cmd = [
            sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(ranks),
            "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
            "-m", "bcfl_engine.distributed", "--clients", str(n), "--dim", str(d),
            "--rule", rule, "--f", str(rule_f), "--check", "--timeout", "120",
        ]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            tail = done.stderr.strip().splitlines()[-1:] or ["no output"]
            raise BcflError(f"bcfl bench --ranks {ranks}: {rule} failed: {tail[0]}")
        report = json.loads(lines[-1])
        per = report["per_rank"]
        same = same and bool(report["identical"])
        echo(
            f"{rule:<14} {n}x{d} on {ranks} ranks: {report['seconds']:.3f} s (slowest rank), "
            f"peak {max(r['peak_rss_mib'] for r in per):.0f} MiB and "
            f"{max(r['sent_mib'] for r in per):.1f} MiB sent per rank; "
            f"bit-identical to one process: {'yes' if report['identical'] else 'NO'}"
        )
    return same
