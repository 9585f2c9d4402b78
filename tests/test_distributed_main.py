"""``torchrun -m bcfl_engine.distributed``: the smoke entry point agrees with one process."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from bcfl_engine.distributed_comm import column_ranges


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("rule,f", [("median", 1), ("krum", 1)])
def test_torchrun_entry_point_matches_one_process(rule, f):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(_free_port()),
        "-m", "bcfl_engine.distributed", "--clients", "9", "--dim", "1300",
        "--rule", rule, "--f", str(f), "--check", "--timeout", "60",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["ranks"] == 2 and report["n"] == 9 and report["d"] == 1300
    assert report["identical"] is True
    assert [r["rows"] for r in report["per_rank"]] == [5, 4]
    widths = [b - a for a, b in column_ranges(1300, 2)]
    for r, width in zip(report["per_rank"], widths, strict=True):
        assert r["peak_rss_mib"] >= r["base_rss_mib"] > 0
        # The all-to-all sends this rank's rows of the other rank's columns.
        assert r["sent_mib"] * 2**20 == r["rows"] * (1300 - width) * 4
        assert all(r[k] >= 0 for k in ("check_s", "all_to_all_s", "rule_s", "gather_s"))
