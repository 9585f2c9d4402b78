"""``torchrun -m bcfl_engine.distributed``: the smoke entry point agrees with one process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import free_port

from bcfl_engine.distributed_comm import column_ranges


@pytest.mark.parametrize("rule,f", [("median", 1), ("krum", 1)])
def test_torchrun_entry_point_matches_one_process(rule, f):
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
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


def test_memory_mapped_rows_give_the_same_bits(tmp_path):
    """``--mmap``: each rank maps its rows of a file written once; the result is the bits of
    one process over the same rows (and of the in-memory run: the same synthetic round)."""
    import hashlib

    from bcfl_engine import aggregate
    from bcfl_engine.distributed_main import _rows, write_rows_file

    n, d = 7, 1300
    path = tmp_path / "rows.f32"
    write_rows_file(path, n, d)
    assert path.stat().st_size == 4 * n * d
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2",
        "--master-addr", "127.0.0.1", "--master-port", str(free_port()),
        "-m", "bcfl_engine.distributed", "--clients", str(n), "--dim", str(d),
        "--rule", "trimmed_mean", "--f", "1", "--check", "--timeout", "60", "--mmap", str(path),
        "--dist-backend", "gloo",
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=180, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["mmap"] is True and report["identical"] is True
    want = aggregate(_rows(0, n, d, 0), rule="trimmed_mean", f=1)
    assert report["result_sha256"] == hashlib.sha256(want.numpy().tobytes()).hexdigest()
    assert all(r["peak_anon_mib"] > 0 for r in report["per_rank"])
