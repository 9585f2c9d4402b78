"""The ``bcfl`` command: help, info, bench, audit against a real node, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bcfl_engine.cli import main
from bcfl_engine.errors import BcflError

ROOT = Path(__file__).resolve().parents[1]
ANVIL_KEY = (
    "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"  # anvil's dev key 0
)


def bcfl(*args: str) -> subprocess.CompletedProcess:
    """``bcfl ARGS`` in a fresh interpreter (the console script's code path, without relying on
    the script being on PATH)."""
    return subprocess.run(
        [sys.executable, "-m", "bcfl_engine.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )


def run_main(capsys, *args: str) -> tuple[int, str, str]:
    """``main(args)`` in this process, with argparse's own exits turned into codes."""
    try:
        code = main(list(args))
    except SystemExit as exc:
        code = int(exc.code or 0)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_help_explains_every_command(capsys):
    code, out, _ = run_main(capsys, "--help")
    assert code == 0
    for word in ("demo", "audit", "info", "bench", "Exit codes"):
        assert word in out
    _, audit_help, _ = run_main(capsys, "audit", "--help")
    for flag in ("--chain", "--task", "--round", "--store"):
        assert flag in audit_help


@pytest.mark.parametrize(
    "argv",
    [[], ["audit", "--task", "1"], ["demo", "--rounds", "many"], ["frobnicate"]],
    ids=["no-command", "missing-flags", "not-a-number", "unknown-command"],
)
def test_malformed_command_lines_exit_2(capsys, argv):
    code, _, err = run_main(capsys, *argv)
    assert code == 2 and "usage: bcfl" in err


def test_info_lists_backends_and_rule_kernels(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    for word in ("torch", "native (C++)", "triton", "mean", "median", "aggregate", "pre"):
        assert word in out
    assert "mean               aggregate torch" in out


def test_bench_without_the_runner_fails_on_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bcfl_engine.bench", None)  # import fails as if absent
    assert main(["bench", "--quick"]) == 3
    err = capsys.readouterr().err.strip()
    assert "bcfl_engine.bench" in err and "\n" not in err


def test_errors_are_one_line_unless_debug(tmp_path):
    args = ["audit", "--chain", "http://127.0.0.1:9", "--task", "1", "--round", "1"]
    args += ["--store", str(tmp_path), "--contract", "0x" + "11" * 20]
    out = bcfl(*args)
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no JSON-RPC node answers" in out.stderr
    with pytest.raises(
        BcflError, match="no JSON-RPC node answers"
    ):  # --debug: the exception itself
        main(["--debug", *args])


def test_audit_without_a_record_or_contract_is_a_usage_error(tmp_path, capsys):
    code = main(
        [
            "audit",
            "--chain",
            "http://127.0.0.1:9",
            "--task",
            "1",
            "--round",
            "1",
            "--store",
            str(tmp_path),
        ]
    )
    assert code == 2 and "--contract" in capsys.readouterr().err


@pytest.fixture(scope="module")
def anvil_ledger(anvil_url):
    pytest.importorskip("web3")
    from bcfl_engine.chain import Ledger

    return Ledger.connect(anvil_url, key=ANVIL_KEY)


def test_audit_passes_then_fails_naming_the_altered_payload(anvil_ledger, tmp_path, capsys):
    from eth_account import Account

    from bcfl_engine.round import AggregationRound, encode_update, sign_payload
    from bcfl_engine.store import PayloadStore
    from bcfl_engine.updates import keccak256

    ledger = anvil_ledger
    keys = [keccak256(b"cli hospital %d" % i) for i in range(3)]
    addresses = [Account.from_key(k).address for k in keys]
    task = ledger.create_task(aggregator=ledger.sender, participants=addresses, model_spec=b"cli")
    rnd = AggregationRound(
        ledger, task, 1, tmp_path, participants=addresses, dim=11, rule="median", f=1
    )
    for k in keys:
        rnd.submit(
            sign_payload(k, task, 1, encode_update(torch.randn(11)), ledger.domain, weight=2)
        )
    rnd.finalize()
    url = ledger.w3.provider.endpoint_uri
    args = ["audit", "--chain", url, "--task", str(task), "--round", "1", "--store", str(tmp_path)]
    ok = bcfl(*args)
    assert ok.returncode == 0, ok.stderr
    assert "OK" in ok.stdout and "3 inclusion proofs" in ok.stdout
    store = PayloadStore(tmp_path)
    victim = store.accepted(task, 1)[1]
    path = store.path(victim["digest"])
    path.write_bytes(path.read_bytes()[::-1])
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and victim["client"] in out and "altered" in out


def test_demo_on_a_node_then_audit_its_rounds(anvil_ledger, tmp_path, capsys, monkeypatch):
    url = anvil_ledger.w3.provider.endpoint_uri
    argv = ["demo", "--chain", url, "--key", ANVIL_KEY, "--rule", "median", "--rounds", "2"]
    argv += ["--clients", "4", "--byzantine", "0.25", "--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chain"]["url"] == url
    task = str(summary["runs"]["median"]["task"])
    capsys.readouterr()
    for r in ("1", "2"):
        audit = [
            "audit",
            "--chain",
            url,
            "--task",
            task,
            "--round",
            r,
            "--store",
            str(tmp_path / "store"),
        ]
        assert main(audit) == 0
        assert "OK" in capsys.readouterr().out
    monkeypatch.delenv("BCFL_CHAIN_KEY", raising=False)
    assert main(["demo", "--chain", url, "--rounds", "1", "--out", str(tmp_path), "--quiet"]) == 2
    assert "--key" in capsys.readouterr().err
