"""``bcfl demo --aggregators 3 --quorum 2 --dishonest-aggregator``: three replicas attest every
round, the two honest ones make it final, the third (another rule) is named as evidence, and
``bcfl audit`` says who attested what."""

from __future__ import annotations

import json

import pytest

from bcfl_engine.cli import main

pytest.importorskip("sklearn")
pytest.importorskip("web3")


def test_the_honest_quorum_finalizes_every_round_and_the_audit_names_the_dishonest_one(
    tmp_path, capsys
):
    out = tmp_path / "demo"
    argv = ["demo", "--rule", "median", "--clients", "4", "--byzantine", "0.25", "--rounds", "2"]
    argv += ["--aggregators", "3", "--quorum", "2", "--dishonest-aggregator"]
    assert main([*argv, "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "3 aggregators, a round is final when 2 attest the same tuple" in printed
    rows = [line for line in printed.splitlines() if "0x" in line and "..." in line]
    assert len(rows) == 2 * 2  # 2 rounds of (median, mean without attack)
    assert all(row.endswith("final by agg1+agg3, evidence against agg2") for row in rows), rows
    summary = json.loads((out / "summary.json").read_text())
    run = summary["runs"]["median"]
    assert [h["quorum"] for h in run["rounds"]] == ["final by agg1+agg3, evidence against agg2"] * 2
    assert (out / "store-agg2").is_dir() and (out / "store-agg3").is_dir()
    audit = ["audit", "--chain", str(out / "chain"), "--task", str(run["task"]), "--round", "2"]
    assert main([*audit, "--store", str(out / "store")]) == 0
    text = capsys.readouterr().out
    assert "OK" in text and "quorum 2 of 3: final tuple 0x" in text
    assert "not the final tuple (conflict evidence)" in text
    # The dishonest replica's store does not recompute the final tuple.
    assert main([*audit, "--store", str(out / "store-agg2")]) == 1
    # An honest replica's store passes the same audit.
    assert main([*audit, "--store", str(out / "store-agg3")]) == 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--aggregators", "9"], "--aggregators must be in [1, 8]"),
        (["--quorum", "2"], "--quorum must be in [1, --aggregators=1]"),
        (["--aggregators", "3", "--quorum", "4"], "--quorum must be in [1, --aggregators=3]"),
        (["--dishonest-aggregator"], "--dishonest-aggregator needs --aggregators >= 2"),
        (["--aggregators", "2", "--secure", "ckks"], "runs on the embedded chain in plaintext"),
    ],
    ids=["too-many", "quorum-alone", "quorum-above-m", "dishonest-alone", "with-ckks"],
)
def test_quorum_usage_errors_exit_2(tmp_path, capsys, argv, message):
    assert main(["demo", *argv, "--out", str(tmp_path / "x"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "x").exists()
