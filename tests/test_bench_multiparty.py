"""benchmarks/bench_multiparty.py: a tiny run prints every row, each with a ratio, and a
collective decryption within the preset's precision (no timing is asserted)."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_tiny_run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    spec = importlib.util.spec_from_file_location(
        "bench_multiparty", ROOT / "benchmarks" / "bench_multiparty.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    argv = ["bench_multiparty", "--d", "5000", "--setup-parties", "3", "--repeat", "1"]
    monkeypatch.setattr(sys, "argv", argv)
    module.main()
    out = capsys.readouterr().out
    error = float(re.search(r"max error ([0-9.e+-]+)", out).group(1))  # type: ignore[union-attr]
    assert error <= 2.0**-20
    for row in ("tenseal-decrypt", "party-share ", "party-share-compute", "combine"):
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(row.strip()))
        assert re.search(r"x\s*[0-9.]+ of tenseal-decrypt", line), line
    assert "2 ciphertexts" in out and "public-key setup, 3 parties" in out
    assert re.search(r"critical path\s+[0-9.]+ s", out)
