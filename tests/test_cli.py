"""The ``bcfl`` command: help, info, bench, audit against a real node, exit codes, one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from store_tools import replace_payload

from bcfl_engine.cli import main

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
    assert "signatures: native batch recovery" in out  # the extension is built for the tests


def test_info_says_why_signatures_are_checked_one_at_a_time(capsys, monkeypatch):
    from bcfl_engine.chain import signing

    monkeypatch.setattr(signing, "batch_recovery_reason", lambda: "no extension (test)")
    assert main(["info"]) == 0
    assert "signatures: one at a time in Python (coincurve): no extension (test)" in (
        capsys.readouterr().out
    )


def test_bench_without_the_runner_fails_on_one_line(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "bcfl_engine.bench", None)  # import fails as if absent
    assert main(["bench", "--quick"]) == 3
    err = capsys.readouterr().err.strip()
    assert "bcfl_engine.bench" in err and "\n" not in err


def test_errors_are_one_line_unless_debug(tmp_path, capsys):
    args = ["audit", "--chain", "http://127.0.0.1:9", "--task", "1", "--round", "1"]
    args += ["--store", str(tmp_path), "--contract", "0x" + "11" * 20]
    out = bcfl(*args)
    assert out.returncode == 3
    assert out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "no JSON-RPC node answers" in out.stderr
    code, _, err = run_main(capsys, "--debug", *args)  # --debug: the traceback, same code
    assert code == 3 and "Traceback" in err and "ChainError" in err
    assert err.strip().splitlines()[-1] == out.stderr.strip()


def test_version_prints_the_package_version(capsys):
    from bcfl_engine import __version__

    code, out, _ = run_main(capsys, "--version")
    assert code == 0 and out.strip() == f"bcfl {__version__}"


@pytest.mark.parametrize("value", [",,", "", ",", "median,,krum"], ids=repr)
@pytest.mark.parametrize("command", ["demo", "bench"])
def test_a_rule_list_with_an_empty_name_is_a_usage_error(tmp_path, capsys, command, value):
    extra = ["--out", str(tmp_path / "out")] if command == "demo" else ["--quick"]
    code, _, err = run_main(capsys, command, "--rule", value, *extra)
    assert code == 2 and "--rule: empty rule name" in err and "\n" not in err.strip()
    assert not (tmp_path / "out").exists()


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
    replace_payload(store, task, 1, victim["digest"], lambda p: p[::-1])
    capsys.readouterr()
    assert main(args) == 1
    out = capsys.readouterr().out
    assert "FAILED" in out and victim["client"] in out and "altered" in out


def test_demo_on_a_node_then_audit_its_rounds(anvil_ledger, tmp_path, capsys, monkeypatch):
    url = anvil_ledger.w3.provider.endpoint_uri
    argv = ["demo", "--chain", url, "--key", ANVIL_KEY, "--rule", "median", "--rounds", "2"]
    argv += ["--clients", "4", "--byzantine", "0.25", "--out", str(tmp_path), "--quiet"]
    (tmp_path / "chain").mkdir()  # an earlier embedded demo's journal, stale once rounds go
    (tmp_path / "chain" / "chain.json").write_text("{}")  # to the node
    assert main(argv) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["chain"]["url"] == url
    assert f"bcfl audit --chain {url} --task " in summary["chain"]["audit_command"]
    assert summary["chain"]["audit_command"] in capsys.readouterr().out
    assert not (tmp_path / "chain").exists()  # removed: the node keeps the chain
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


@pytest.fixture(scope="module")
def journaled_round(tmp_path_factory):
    """One median round of 3 hospitals committed to an embedded chain that records its
    transactions: ``(chain folder, store folder, task)``."""
    pytest.importorskip("web3")
    from eth_account import Account

    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound, encode_update, sign_payload
    from bcfl_engine.updates import keccak256

    root = tmp_path_factory.mktemp("journaled")
    ledger = Ledger.embedded(journal=root / "chain")
    keys = [keccak256(b"journal hospital %d" % i) for i in range(3)]
    addresses = [Account.from_key(k).address for k in keys]
    task = ledger.create_task(aggregator=ledger.sender, participants=addresses, model_spec=b"j")
    rnd = AggregationRound(
        ledger, task, 1, root / "store", participants=addresses, dim=9, rule="median", f=1
    )
    for i, k in enumerate(keys):
        update = encode_update(torch.linspace(-1, 1, 9) * (i + 1))
        rnd.submit(sign_payload(k, task, 1, update, ledger.domain, weight=i + 1))
    rnd.finalize()
    return root / "chain", root / "store", task


def _tampered_copy(store: Path, task: int, into: Path) -> tuple[Path, str]:
    """A copy of ``store`` with the payload of the round's second client reversed."""
    import shutil

    from bcfl_engine.store import PayloadStore

    copy = Path(shutil.copytree(store, into))
    victim = PayloadStore(copy).accepted(task, 1)[1]
    replace_payload(PayloadStore(copy), task, 1, victim["digest"], lambda p: p[::-1])
    return copy, victim["client"]


@pytest.mark.parametrize("damage", ["not json", "contract garbled", "contract missing"])
def test_audit_of_a_damaged_round_record_is_a_finding_and_writes_nothing(
    journaled_round, tmp_path, capsys, damage
):
    """A tampered round.json is what the audit reports (exit 1), never a crash (exit 3); and
    the audit opens the store read-only: every file is as it was, a writer's temporary too."""
    import shutil

    from bcfl_engine.store import PayloadStore

    chain, store, task = journaled_round
    copy = Path(shutil.copytree(store, tmp_path / "store"))
    [path] = list(copy.rglob("round.json"))
    record = json.loads(path.read_text())
    if damage == "not json":
        path.write_text("{ not json")
    elif damage == "contract garbled":
        path.write_text(json.dumps({**record, "contract": "0xnot-an-address"}))
    else:
        path.write_text(json.dumps({k: v for k, v in record.items() if k != "contract"}))
    in_flight = path.parent / ".tmp-another-writer"
    in_flight.write_bytes(b"half a payload")
    before = {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()}
    args = ["audit", "--chain", str(chain), "--task", str(task), "--round", "1"]
    code, out, err = run_main(capsys, *args, "--store", str(copy))
    assert code == 1 and "FAILED" in out and "round" in out, (out, err)
    assert {p: p.read_bytes() for p in copy.rglob("*") if p.is_file()} == before
    assert PayloadStore(copy, readonly=True).readonly


def test_audit_replays_the_embedded_chain_from_its_journal(journaled_round, tmp_path, capsys):
    chain, store, task = journaled_round
    args = ["audit", "--chain", str(chain), "--task", str(task), "--round", "1"]
    fresh = bcfl(*args, "--store", str(store))  # another process: the chain is rebuilt
    assert fresh.returncode == 0, fresh.stderr
    assert "OK" in fresh.stdout and "3 inclusion proofs" in fresh.stdout
    tampered, client = _tampered_copy(store, task, tmp_path / "store")
    code, out, _ = run_main(capsys, *args, "--store", str(tampered))
    assert code == 1 and "FAILED" in out and client in out and "altered" in out
    # A journal that lost a transaction rebuilds another chain: the round is not there.
    lines = (chain / "transactions").read_text().splitlines()
    short = tmp_path / "short"
    short.mkdir()
    (short / "chain.json").write_text((chain / "chain.json").read_text())
    (short / "transactions").write_text("\n".join(lines[:-1]) + "\n")
    code, out, _ = run_main(
        capsys, "audit", "--chain", str(short), *args[3:], "--store", str(store)
    )
    assert code == 1 and "no commit" in out


def test_audit_of_a_folder_that_is_no_chain_is_a_usage_error(tmp_path, capsys):
    argv = ["audit", "--chain", str(tmp_path), "--task", "1", "--round", "1"]
    code, _, err = run_main(capsys, *argv, "--store", str(tmp_path))
    assert code == 2 and "neither a node URL" in err


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize("expected", [0, 1, 2, 3])
def test_debug_keeps_every_exit_code(journaled_round, tmp_path, capsys, expected, debug):
    chain, store, task = journaled_round
    audit = ["audit", "--task", str(task), "--round", "1"]
    argv = {
        0: ["info"],
        1: [*audit, "--chain", str(chain), "--store", ""],
        2: ["demo", "--rule", ",,", "--out", str(tmp_path / "out")],
        3: [*audit, "--chain", "http://127.0.0.1:9", "--contract", "0x" + "11" * 20],
    }[expected]
    if expected == 1:
        argv[-1] = str(_tampered_copy(store, task, tmp_path / "store")[0])
    if expected == 3:
        argv += ["--store", str(tmp_path)]
    code, out, err = run_main(capsys, *(["--debug"] if debug else []), *argv)
    assert code == expected, err
    assert ("Traceback" in err) == (debug and expected in (2, 3)), err
    if expected == 1:  # the audit's finding is its report, not an exception
        assert "FAILED" in out
    if expected in (2, 3):
        assert err.strip().splitlines()[-1].startswith(f"bcfl {argv[0]}: error: ")


def _no_allocation(monkeypatch):
    from bcfl_engine import bench

    def refuse(*args, **kwargs):
        raise AssertionError("bench allocated updates for a size it should have rejected")

    monkeypatch.setattr(bench, "make_updates", refuse)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--sizes", "16x"], "NxD"),
        (["--sizes", "16"], "NxD"),
        (["--sizes", "ax3"], "NxD"),
        (["--sizes", ""], "NxD"),
        (["--sizes", "16x1e3"], "NxD"),
        (["--sizes", "0x100"], "n must be an int >= 1; got 0"),
        (["--sizes", "16x-3"], "d must be an int >= 1; got -3"),
        (["--n", "0"], "n must be an int >= 1"),
        (["--d", "-1"], "d must be an int >= 1"),
        (["--n", "1000000", "--d", "1000000000"], "GB free"),
        (["--sizes", "8x100,100000000x100000000"], "GB free"),
        (["--sizes", "8x100", "--n", "8"], "--sizes replaces"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bench_rejects_bad_sizes_before_allocating(monkeypatch, capsys, argv, message):
    _no_allocation(monkeypatch)
    code, _, err = run_main(capsys, "bench", *argv, "--rule", "mean")
    assert code == 2 and message in err, err


def test_bench_retimes_a_figure_above_the_floor(monkeypatch, capsys):
    """A timer that once makes median faster than reading its input: a warning, the floor
    and median timed again, and the reported figure is the possible one."""
    from bcfl_engine import bench

    floors, timed = [], []

    def fake_floor(x, repeats=5):
        floors.append(x.shape)
        return 1e-3

    def fake_time_call(fn, **kwargs):
        timed.append(fn)
        return [1e-4] if len(timed) == 1 else [2e-3]  # the first figure: 10x the floor

    monkeypatch.setattr(bench, "read_floor_s", fake_floor)
    monkeypatch.setattr(bench, "time_call", fake_time_call)
    code, out, err = run_main(capsys, "bench", "--quick", "--rule", "median,mean")
    assert code == 0
    assert "warning: median timed at 10.00 of the memory-read floor" in err
    assert "(1/3)" in err and "(2/3)" not in err and "mean timed" not in err
    assert len(floors) == 2 and len(timed) == 3  # floor and median once more, mean once
    table = {line.split()[0]: line.split() for line in out.splitlines()[3:5]}
    assert table["median"][4] == "0.50" and table["mean"][4] == "0.50"  # 1 ms / 2 ms
    assert "median: ok: retimed 1x after a figure above the floor" in out


def test_bench_reports_a_figure_that_stays_above_the_floor(monkeypatch):
    from bcfl_engine import bench

    timed = []
    monkeypatch.setattr(bench, "read_floor_s", lambda x, repeats=5: 1e-3)
    monkeypatch.setattr(bench, "time_call", lambda fn, **kw: timed.append(fn) or [5e-4])
    rows = bench.run_engine_bench(["median"], quick=True, echo=False)
    assert len(timed) == 1 + bench.MAX_RETIMES  # bounded
    assert rows[0]["floor_fraction"] == 2.0 and "unreliable" in rows[0]["note"]


@pytest.mark.parametrize("debug", [False, True], ids=["plain", "debug"])
@pytest.mark.parametrize(
    ("error", "expected"),
    [
        ("UsageError", 2),
        ("InvalidArgument", 2),
        ("PreconditionError", 2),
        ("AuditError", 1),
        ("ChainError", 3),
        ("MissingDependency", 3),
        ("OSError", 3),
        ("RuntimeError", 3),
        ("KeyboardInterrupt", 130),
    ],
)
def test_each_error_type_has_one_exit_code_with_or_without_debug(
    monkeypatch, capsys, error, expected, debug
):
    """Whatever a command raises maps to the same code with --debug, which adds the traceback."""
    import builtins

    from bcfl_engine import cli, errors

    cls = getattr(cli, error, None) or getattr(errors, error, None) or getattr(builtins, error)

    def failing(args):
        raise cls("what went wrong")

    monkeypatch.setattr(cli, "_cmd_info", failing)
    code, _, err = run_main(capsys, *(["--debug"] if debug else []), "info")
    assert code == expected
    said = "interrupted" if expected == 130 else "what went wrong"
    assert ("Traceback" in err) == debug and said in err.strip().splitlines()[-1]


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("genesis", "genesis_state_root of this embedded chain is"),
        ("chain_id", "chain_id of this embedded chain is"),
        ("garbled", "line 2 is not a hex transaction and its block hash"),
        ("reordered", "was not mined again"),
        ("registry", "no contract at the recorded registry address"),
    ],
)
def test_a_damaged_journal_is_refused_by_name(journaled_round, tmp_path, capsys, damage, message):
    chain, store, task = journaled_round
    manifest = json.loads((chain / "chain.json").read_text())
    lines = (chain / "transactions").read_text().splitlines()
    if damage == "genesis":
        manifest["genesis_state_root"] = "0x" + "00" * 32
    elif damage == "chain_id":
        manifest["chain_id"] += 1
    elif damage == "garbled":
        lines[1] = "0xnot-a-transaction"
    elif damage == "reordered":  # the deployer's nonce 1 before its nonce 0
        lines[0], lines[1] = lines[1], lines[0]
    else:
        manifest["registry"] = "0x" + "22" * 20
    copy = tmp_path / "chain"
    copy.mkdir()
    (copy / "chain.json").write_text(json.dumps(manifest))
    (copy / "transactions").write_text("\n".join(lines) + "\n")
    argv = ["audit", "--chain", str(copy), "--task", str(task), "--round", "1"]
    argv += ["--store", str(store), "--contract", manifest["registry"]]
    code, _, err = run_main(capsys, *argv)
    assert code == 3 and message in err, err


def test_output_into_a_closed_pipe_is_not_an_error():
    # `bcfl info | head -1` where head has gone before bcfl writes (here `true`, which reads
    # nothing): bcfl must end quietly, code 0.
    out = subprocess.run(
        f"{sys.executable} -m bcfl_engine.cli info | true; echo ${{PIPESTATUS[0]}}",
        shell=True,
        executable="/bin/bash",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert out.stdout.strip() == "0", (out.stdout, out.stderr)
    assert out.stderr == "", out.stderr
