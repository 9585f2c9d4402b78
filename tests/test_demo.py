"""``bcfl demo``: the data split, the attacks, and the claim on real data: with 20% Byzantine
hospitals FedAvg collapses while robust rules stay near the attack-free run; CKKS FedAvg
matches plaintext FedAvg within the preset's precision."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from store_tools import flip_payload_byte

from bcfl_engine.cli import main
from bcfl_engine.demo import attacks, data
from bcfl_engine.demo.train import Trainer
from bcfl_engine.errors import InvalidArgument

pytest.importorskip("sklearn")


@pytest.mark.parametrize("name", ["breast_cancer", "diabetes"])
def test_split_is_non_iid_disjoint_and_deterministic(name):
    fed = data.load(name, 7, seed=3)
    again = data.load(name, 7, seed=3)
    sizes = [len(y) for _, y in fed.clients]
    assert min(sizes) >= data.MIN_PER_CLIENT
    total = sum(sizes) + len(fed.test[1])
    assert total == (569 if name == "breast_cancer" else 442)
    rows = torch.cat([x for x, _ in fed.clients] + [fed.test[0]])
    assert len(torch.unique(rows, dim=0)) == total  # disjoint: no patient in two places
    for (x1, y1), (x2, y2) in zip(fed.clients, again.clients, strict=True):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    if name == "breast_cancer":
        shares = [float(y.mean()) for _, y in fed.clients]
        assert max(shares) - min(shares) > 0.3  # hospitals see different case mixes
        assert fed.metric == "accuracy"
    else:
        assert fed.metric == "rmse" and fed.y_scale > 1
    assert abs(float(torch.cat([x for x, _ in fed.clients]).mean())) < 0.2  # standardized


def test_split_rejects_impossible_requests():
    with pytest.raises(InvalidArgument, match="at most"):
        data.load("breast_cancer", 100)
    with pytest.raises(InvalidArgument, match="dataset"):
        data.load("mnist")


def test_attacks():
    u = torch.linspace(-1, 1, 11)
    assert torch.equal(attacks.sign_flip(u), -attacks.SIGN_FLIP_SCALE * u)
    noise = attacks.scaled_noise(torch.ones(10_000), seed=1)
    assert abs(float(noise.std()) - attacks.NOISE_SCALE) < 0.05 * attacks.NOISE_SCALE
    assert torch.equal(
        attacks.poison_labels(torch.tensor([0.0, 1.0]), "classification"), torch.tensor([1.0, 0.0])
    )
    assert torch.equal(attacks.corrupt("label_flip", u, 0), u)
    byz = attacks.assign(10, 0.2, "mix", seed=0)
    assert len(byz) == 2 and sorted(byz.values()) == ["scaled_noise", "sign_flip"]
    assert len(attacks.assign(10, 0.3, "mix", seed=0)) == 3
    assert attacks.assign(10, 0.0) == {} and attacks.byzantine_count(7, 0.49) == 3
    with pytest.raises(InvalidArgument, match=r"0\.5"):
        attacks.assign(10, 0.5)
    with pytest.raises(InvalidArgument, match="attack"):
        attacks.assign(10, 0.2, "backdoor")


def test_local_training_improves_the_model():
    fed = data.load("breast_cancer", 3, seed=0)
    tr = Trainer(fed.n_features, fed.task, hidden=8)
    p0 = tr.initial(0)
    p1 = p0 + tr.update(p0, *fed.clients[0], seed=0)
    assert tr.score(p1, *fed.test) > tr.score(p0, *fed.test)
    assert tr.score(torch.full_like(p0, float("nan")), *fed.test) == 0.0


def test_demo_mean_collapses_while_robust_rules_hold(tmp_path, capsys):
    """10 hospitals, 2 Byzantine (sign flip x10 and scaled noise), 3 rounds."""
    rules = [
        r
        for r in ("mean", "median", "trimmed_mean")
        if importlib.util.find_spec(f"bcfl_engine.rules.{r}")
    ]
    code = main(
        ["demo", "--rule", ",".join(rules), "--rounds", "3", "--out", str(tmp_path), "--quiet"]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "round 3/3" in printed and "gas" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["byzantine_clients"]) == 2
    final = summary["final"]
    clean = final["mean, no attack"]
    assert clean > 0.85
    assert final["mean"] < clean - 0.3, final  # FedAvg collapses
    for rule in rules[1:]:
        assert final[rule] >= clean - 0.05, final  # robust rules stay near the attack-free run
    for run in summary["runs"].values():
        assert [h["round"] for h in run["rounds"]] == [1, 2, 3]
        assert all(h["gas"] > 0 and len(h["root"]) == 66 for h in run["rounds"])
    roots = [h["root"] for run in summary["runs"].values() for h in run["rounds"]]
    assert len(set(roots)) == len(roots)
    assert (tmp_path / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_on_diabetes_reports_rmse(tmp_path):
    argv = [
        "demo",
        "--dataset",
        "diabetes",
        "--rule",
        "mean,median",
        "--rounds",
        "2",
        "--clients",
        "8",
    ]
    code = main([*argv, "--out", str(tmp_path), "--quiet"])
    assert code == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["metric"] == "rmse"
    final = summary["final"]
    assert final["mean"] > 2 * final["mean, no attack"]  # the error blows up under attack
    assert final["median"] < 1.5 * final["mean, no attack"]


@pytest.mark.parametrize("threshold", [None, 3], ids=["n-of-n", "3-of-4"])
def test_demo_ckks_matches_plaintext_fedavg_under_a_multiparty_key(tmp_path, capsys, threshold):
    pytest.importorskip("tenseal")
    rounds = 2
    argv = [
        "demo",
        "--secure",
        "ckks",
        "--clients",
        "4",
        "--byzantine",
        "0",
        "--rounds",
        str(rounds),
    ]
    argv += [] if threshold is None else ["--threshold", str(threshold)]
    code = main([*argv, "--out", str(tmp_path), "--quiet"])
    assert code == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["runs"]) == {"mean", "mean, ckks"}
    ckks = summary["ckks"]
    assert ckks["keys"] == "multiparty" and ckks["parties"] == 4
    assert ckks["threshold"] == (threshold or 4)
    assert "the aggregator none" in out and ckks["who_decrypts"] in out
    # Each round's mean is off by at most the key's precision; float32 parameters add one ulp.
    assert (
        ckks["max_abs_param_diff_vs_plaintext"]
        <= rounds * ckks["precision"] + np.finfo(np.float32).eps
    )
    assert summary["final"]["mean, ckks"] == summary["final"]["mean"]
    # The audit of the encrypted round recombines the hospitals' stored decryption shares.
    command = summary["chain"]["audit_command_secure"].split()
    assert command[:2] == ["bcfl", "audit"] and command[-2:] == ["--store", str(tmp_path / "store")]
    assert main(command[1:]) == 0
    assert "decrypted by the parties' stored shares" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--byzantine", "0.5"], "--byzantine"),
        (["--rule", "fedsomething"], "unknown"),
        (["--clients", "2"], "--clients"),
        (["--secure", "ckks", "--rule", "krum"], "--secure ckks --rule krum: krum requires"),
        (["--clients", "80"], "at most"),
        (["--threshold", "3"], "needs --secure ckks"),
        (["--secure", "ckks", "--threshold", "11"], "--threshold must be in [2, --clients=10]"),
        (["--secure", "ckks", "--threshold", "1"], "--threshold must be in"),
    ],
    ids=[
        "byzantine-half",
        "unknown-rule",
        "two-clients",
        "ckks-krum-buckets",
        "too-many-clients",
        "threshold-plain",
        "threshold-above-n",
        "threshold-one",
    ],
)
def test_demo_usage_errors_exit_2_on_one_line(tmp_path, capsys, argv, message):
    assert main(["demo", *argv, "--out", str(tmp_path), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


def test_a_rule_precondition_fails_before_any_work(tmp_path, capsys, monkeypatch):
    """4 hospitals at 30% Byzantine give f=1; Krum needs n > 2f + 2: exit 2 before the data
    set is even loaded, and no output folder."""
    from bcfl_engine import rules

    def no_work(*args, **kwargs):
        raise AssertionError("the demo loaded data before checking the rules' preconditions")

    monkeypatch.setattr(data, "load", no_work)
    out = tmp_path / "out"
    argv = ["demo", "--clients", "4", "--byzantine", "0.3", "--out", str(out), "--quiet"]
    for debug in ([], ["--debug"]):
        assert main([*debug, *argv]) == 2
        err = capsys.readouterr().err
        assert f"krum requires {rules.get('krum').precondition.text}" in err
        assert "f=1" in err and "at least 5 hospitals" in err
        assert not out.exists()
    # The f the check uses is the demo's own: at 0.25 of 4, f=1 too, and median (n > 2f) runs.
    assert attacks.byzantine_count(4, 0.3) == attacks.byzantine_count(4, 0.25) == 1


def _summary(byzantine: bool, ckks: bool = False) -> dict:
    def run(rule, attacked, secure=None, acc=0.9):
        rounds = [{"round": r, "accuracy": acc} for r in (1, 2)]
        return {"rule": rule, "attacked": attacked, "secure": secure, "rounds": rounds}

    runs = {}
    if byzantine:
        runs["mean, no attack"] = run("mean", False)
    runs["mean"] = run("mean", byzantine, acc=0.2 if byzantine else 0.9)
    runs["median"] = run("median", byzantine)
    if ckks:
        runs["mean, ckks"] = run("mean", byzantine, "ckks")
    return {
        "dataset": "breast_cancer",
        "metric": "accuracy",
        "clients": 5,
        "byzantine_clients": {"3": "sign_flip"} if byzantine else {},
        "runs": runs,
    }


@pytest.mark.parametrize(
    ("byzantine", "ckks", "labels"),
    [
        (True, False, ["FedAvg (attacked)", "median", "FedAvg, no attack (reference)"]),
        (True, True, ["FedAvg (attacked)", "median", "FedAvg on CKKS (attacked)",
                      "FedAvg, no attack (reference)"]),
        (False, True, ["FedAvg", "median", "FedAvg on CKKS"]),
    ],
    ids=["attacked", "attacked-ckks", "no-attack-ckks"],
)  # fmt: skip
def test_plot_draws_the_reference_on_top_and_labels_attacked_fedavg(byzantine, ckks, labels):
    import matplotlib.pyplot as plt

    from bcfl_engine.demo.plot import figure

    fig = figure(_summary(byzantine, ckks))
    try:
        (ax,) = fig.axes
        assert [t.get_text() for t in ax.get_legend().get_texts()] == labels
        lines = ax.get_lines()
        assert [line.get_label() for line in lines] == labels
        if byzantine:  # the reference: drawn last, above every other line, black and dashed
            ref = lines[-1]
            assert ref.get_zorder() > max(line.get_zorder() for line in lines[:-1])
            assert ref.get_linestyle() == "--" and ref.get_color() == "black"
            assert all(line.get_linestyle() == "-" for line in lines[:-1])
    finally:
        plt.close(fig)


def test_demo_prints_an_audit_command_that_passes_then_catches_a_tampered_payload(tmp_path, capsys):
    """A tiny demo on the embedded chain; its printed audit command, run in a fresh process
    (the demo's chain is gone), rebuilds the chain from bcfl-demo/chain and exits 0; after a
    stored payload is altered, the same command exits 1."""
    import shlex
    import subprocess
    import sys

    from bcfl_engine.store import PayloadStore

    out = tmp_path / "demo"
    argv = ["demo", "--rule", "median", "--clients", "4", "--byzantine", "0.25"]
    assert main([*argv, "--rounds", "1", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    command = shlex.split(printed[-1])
    summary = json.loads((out / "summary.json").read_text())
    task = summary["runs"]["median"]["task"]
    assert command == [
        "bcfl", "audit", "--chain", str(out / "chain"), "--task", str(task), "--round", "1",
        "--store", str(out / "store"),
    ]  # fmt: skip
    assert summary["chain"]["audit_command"] == printed[-1].strip()
    fresh = subprocess.run(
        [sys.executable, "-m", "bcfl_engine.cli", *command[1:]],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert fresh.returncode == 0, fresh.stderr
    assert "OK" in fresh.stdout and "result recomputed with median" in fresh.stdout
    store = PayloadStore(out / "store")
    victim = store.accepted(task, 1)[0]
    flip_payload_byte(store, task, 1, victim["digest"], at=-1)
    assert main(command[1:]) == 1
    assert "altered" in capsys.readouterr().out


@pytest.mark.slow
def test_demo_robust_rules_on_buckets_of_encrypted_updates(tmp_path, capsys):
    """2 of 10 hospitals Byzantine: median and trimmed mean on the decrypted means of buckets
    end within 0.03 of the same rules on plaintext updates, while encrypted FedAvg collapses
    as plaintext FedAvg does; the audit of a bucketed round passes."""
    pytest.importorskip("tenseal")
    argv = ["demo", "--secure", "ckks", "--rule", "mean,median,trimmed_mean", "--rounds", "3"]
    assert main([*argv, "--out", str(tmp_path), "--quiet"]) == 0
    out = capsys.readouterr().out
    summary = json.loads((tmp_path / "summary.json").read_text())
    final = summary["final"]
    for rule in ("median", "trimmed_mean"):
        assert abs(final[f"{rule}, ckks"] - final[rule]) <= 0.03, final
        assert final[f"{rule}, ckks"] > final["mean, ckks"] + 0.3, final
        line = summary["ckks"]["lines"][f"{rule}, ckks"]
        assert line["bucket_size"] == 2 and "at least 2 hospitals" in line["hides"]
    # Both FedAvg lines collapse, not to the same number: a Byzantine hospital's encrypted update
    # passes the client library, which holds it to the lean preset's bound (|x| <= 1: sign_flip
    # reached 2.0, scaled_noise 3.1), while its plaintext update is sent as it is.
    for line in ("mean", "mean, ckks"):
        assert final[line] < final["mean, no attack"] - 0.3, final
    assert "bucket" in out and "median, ckks" in out
    command = summary["chain"]["audit_command_secure"].split()
    assert main(command[1:]) == 0
    assert "result recomputed with median, decrypted" in capsys.readouterr().out
