"""``bcfl bench --ranks N``: rules timed on N gloo processes, each checked against one process."""

from __future__ import annotations

import pytest

from bcfl_engine.cli import main


def test_bench_ranks_times_rules_on_two_processes_and_checks_the_bits(capsys):
    code = main(["bench", "--ranks", "2", "--n", "9", "--d", "1300", "--rule", "median,krum"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if "on 2 ranks" in line]
    assert [line.split()[0] for line in lines] == ["median", "krum"]
    assert all("bit-identical to one process: yes" in line for line in lines)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--ranks", "1"], "--ranks must be in [2, 64]"),
        (["--ranks", "2", "--device", "cuda"], "CPU"),
    ],
)
def test_bench_ranks_usage_errors(capsys, argv, message):
    assert main(["bench", *argv, "--n", "9", "--d", "100"]) == 2
    assert message in capsys.readouterr().err
