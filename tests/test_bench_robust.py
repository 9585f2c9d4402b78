"""benchmarks/robust.py and bcfl_engine.bench: a tiny run, its table and its JSON (no timings
are asserted, only that they are present and consistent)."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path
from types import ModuleType

import pytest

from bcfl_engine import bench

ROOT = Path(__file__).resolve().parents[1]


def load_runner() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_robust", ROOT / "benchmarks" / "robust.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it loads
    spec.loader.exec_module(module)
    return module


RULES = "mean,median,krum,geometric_median,centered_clipping,clip"


def test_quick_run_prints_the_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = load_runner()
    out = tmp_path / "robust.json"
    argv = ["--quick", "--sizes", "9x300", "--rules", RULES, "--repeats", "1", "--json", str(out)]
    assert runner.main(argv) == 0
    text = capsys.readouterr().out
    assert "== n=9 d=300 float32" in text and "memory-read floor" in text
    for header in ("rule", "provider", "GB/s", "of floor", "bcfl x", "status"):
        assert header in text

    doc = json.loads(out.read_text())
    assert doc["sizes"][0]["n"] == 9 and doc["sizes"][0]["floor_s"] > 0
    rows = doc["rows"]
    by = {(r["rule"], r["provider"]): r for r in rows}
    # Every requested rule has a row from every peer: measured, missing, n/a, never dropped.
    for rule in RULES.split(","):
        for peer in ("flower", "byzfl", "torch"):
            assert (rule, peer) in by, (rule, peer)
    assert by[("geometric_median", "flower")]["status"] == "n/a"
    assert by[("mean", "torch")]["status"] == "ok"
    nbytes = 9 * 300 * 4
    floor = doc["sizes"][0]["floor_s"]
    for r in rows:
        assert r["status"] in {"ok", "missing", "n/a", "not available", "skipped", "error"}, r
        assert r["status"] != "error", r
        if r["status"] == "ok":
            assert r["seconds"] > 0 and r["runs"] >= 1
            assert math.isclose(r["gbps"], nbytes / r["seconds"] / 1e9, rel_tol=1e-9)
            assert math.isclose(r["floor_fraction"], floor / r["seconds"], rel_tol=1e-9)
    # The engine's fast path comes first in its rule's group; ratios are against it.
    fast = next(r for r in rows if r["rule"] == "geometric_median")
    assert fast["provider"].startswith("bcfl[") and fast["bcfl_speedup"] == 1.0
    # Next to it, the public call on a raw tensor (finite check on), on the same backend: its
    # "bcfl x" is what the public call costs over the bare kernel.
    for rule in RULES.split(","):
        kernel = next(r for r in rows if r["rule"] == rule)
        public = by[(rule, "public")]
        assert public["status"] == "ok", public
        assert kernel["provider"][5:-1] in public["note"] and "checked" in public["note"]
        assert math.isclose(public["bcfl_speedup"], public["seconds"] / kernel["seconds"])
    assert by[("mean", "public")]["note"].startswith("be.aggregate(x)")
    assert by[("clip", "public")]["note"].startswith("rules.clip(x)")
    byz = by[("geometric_median", "byzfl")]
    assert math.isclose(byz["bcfl_speedup"], byz["seconds"] / fast["seconds"])


def test_a_peer_that_is_not_installed_is_reported_missing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runner = load_runner()

    def absent() -> None:
        raise ImportError("No module named 'flwr'")

    runner.PEER_CHECK["flower"] = absent
    out = tmp_path / "r.json"
    argv = ["--sizes", "8x64", "--rules", "mean", "--repeats", "1", "--json", str(out)]
    assert runner.main(argv) == 0
    rows = {r["provider"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["flower"]["status"] == "missing" and "flwr" in rows["flower"]["note"]
    assert rows["byzfl"]["status"] == "ok"
    assert "missing" in capsys.readouterr().out


def test_slow_peers_are_skipped_with_an_estimate(tmp_path: Path) -> None:
    runner = load_runner()
    out = tmp_path / "r.json"
    # A zero budget: Bulyan (cost ~ n^3) is probed at n=16 and not run at n=40.
    argv = ["--sizes", "40x64", "--rules", "bulyan", "--peers", "flower", "--budget", "0"]
    assert runner.main([*argv, "--repeats", "1", "--json", str(out)]) == 0
    rows = {r["provider"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["flower"]["status"] == "skipped" and "estimated from n=16" in rows["flower"]["note"]
    # The engine's own torch reference is probed the same way; its fast path always runs.
    if "bcfl[torch]" in rows and "bcfl[native]" in rows:
        assert rows["bcfl[torch]"]["status"] == "skipped"
        assert rows["bcfl[native]"]["status"] == "ok"


def test_run_engine_bench_returns_one_row_per_rule(capsys: pytest.CaptureFixture[str]) -> None:
    rows = bench.run_engine_bench(["mean", "clip"], n=8, d=100, repeats=1, echo=True)
    assert [r["rule"] for r in rows] == ["mean", "clip"]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in rows)
    text = capsys.readouterr().out
    assert "n=8 d=100" in text and "clip" in text


def test_format_table_aligns_columns() -> None:
    rows = [{"a": "x", "b": 1.5}, {"a": "longer", "b": None}]
    lines = bench.format_table(rows, [("a", "A", ""), ("b", "B", ".1f")]).splitlines()
    assert lines[0].startswith("A       B") and lines[1].startswith("------  -")
    assert lines[2].split() == ["x", "1.5"] and lines[3].split() == ["longer", "-"]
