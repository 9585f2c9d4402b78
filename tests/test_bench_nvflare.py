"""benchmarks/bench_nvflare.py: a tiny run (no timings asserted: that both providers ran, in
their own processes, on the same messages, and the aggregates were byte-identical)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("tenseal")
pytest.importorskip("nvflare")

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_tiny_run_reports_both_providers_and_same_bytes() -> None:
    cmd = [sys.executable, str(ROOT / "benchmarks" / "bench_nvflare.py"), "--n", "3", "--d", "9000"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = re.findall(r"^\s+3\s+9000 (nvflare|bcfl)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)$",
                      done.stdout, re.M)  # fmt: skip
    assert [r[0] for r in rows] == ["nvflare", "bcfl"], done.stdout
    assert rows[0][3:] == ("1.00", "1.00") and all(float(x) > 0 for r in rows for x in r[1:])
    assert "aggregates byte-identical to NVFlare's for every (n, d)" in done.stdout
