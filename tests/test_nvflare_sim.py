"""NVIDIA FLARE's simulator running exported jobs with the engine's aggregators.

An HE job (FedAvgRecipeWithHE, 2 clients, 2 rounds)
with the engine's aggregator: every round's aggregate byte-identical to NVFlare's aggregator fed
the same contributions (tests/nvflare_job.py runs both side by side in the server), with the
engine's decomposer registered from the site's folder (layers read as wire bytes) and without
it (NVFlare's decomposer rebuilds the layers; the engine sums their re-serialized bytes). A
plaintext ScatterAndGather job (3 clients, 2 rounds) with RobustAggregator: every round's
aggregate the rule's torch reference on the contributions the server accepted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ts = pytest.importorskip("tenseal")
pytest.importorskip("nvflare")

from nvflare_job import CheckedHEAggregator, CheckedRobustAggregator, TinyNet  # noqa: E402

HERE = Path(__file__).resolve().parent
# torch is imported before NVFlare starts: imported first while the simulator registers the
# site's decomposers (after gRPC, TenSEAL and friends are loaded), libtorch_cpu fails to load
# ("Intel oneMKL FATAL ERROR: Cannot load libtorch_cpu.so") on this machine.
LAUNCH = "import sys, torch; from nvflare.cli import main; sys.argv[0] = 'nvflare'; main()"


def he_workspace(root: Path, wire: bool) -> Path:
    """HEBuilder's two context files in ``startup/``; the engine's decomposer in the site's
    ``local/custom/nvflare_decomposers/`` (the simulator copies both into every site)."""
    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.generate_relin_keys()
    ctx.global_scale = 2**40
    ws = root / "ws"
    (ws / "startup").mkdir(parents=True)
    keys = dict(save_galois_keys=False, save_relin_keys=True)
    (ws / "startup" / "server_context.tenseal").write_bytes(
        ctx.serialize(save_public_key=False, save_secret_key=False, **keys)
    )
    (ws / "startup" / "client_context.tenseal").write_bytes(
        ctx.serialize(save_public_key=True, save_secret_key=True, **keys)
    )
    if wire:
        folder = ws / "local" / "custom" / "nvflare_decomposers"
        folder.mkdir(parents=True)
        (folder / "bcfl_wire.py").write_text(
            "from bcfl_engine.integrations.nvflare_wire import CKKSWireDecomposer  # noqa: F401\n"
        )
    return ws


def simulate(job: Path, ws: Path, clients: int) -> str:
    """Run NVFlare's simulator on ``job`` in ``ws``; the server's log (rc 0 asserted)."""
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-c", LAUNCH, "simulator", str(job), "-w", str(ws)]
    done = subprocess.run(
        [*cmd, "-n", str(clients), "-t", str(clients)],
        env=env,
        cwd=ws.parent,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = (ws / "server" / "log.txt").read_text() if (ws / "server" / "log.txt").exists() else ""
    assert done.returncode == 0, (done.stderr[-2000:], log[-3000:])
    return log


@pytest.mark.slow
@pytest.mark.parametrize("wire", [True, False], ids=["wire-bytes", "nvflare-objects"])
def test_simulator_he_job_matches_nvflare(tmp_path: Path, wire: bool) -> None:
    from nvflare.app_opt.pt.recipes.fedavg_he import FedAvgRecipeWithHE

    record = tmp_path / "record.jsonl"
    recipe = FedAvgRecipeWithHE(
        name="he",
        model=TinyNet(),
        min_clients=2,
        num_rounds=2,
        train_script=str(HERE / "nvflare_train.py"),
        aggregator=CheckedHEAggregator(record=str(record)),
    )
    recipe.export(str(tmp_path / "jobs"))
    ws = he_workspace(tmp_path, wire)
    env = dict(
        os.environ, PYTHONPATH=os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    )
    cmd = [sys.executable, "-c", LAUNCH, "simulator", str(tmp_path / "jobs" / "he")]
    done = subprocess.run(
        [*cmd, "-w", str(ws), "-n", "2", "-t", "2"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    log = (ws / "server" / "log.txt").read_text() if (ws / "server" / "log.txt").exists() else ""
    assert done.returncode == 0, (done.stderr[-2000:], log[-3000:])
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert rows == [{"round": r, "same": True, "encrypted": 4, "wire": wire} for r in (0, 1)], log[
        -3000:
    ]
    assert ("rebuilt by NVFlare's decomposer" in log) is not wire


@pytest.mark.slow
def test_simulator_plaintext_job_with_robust_aggregator(tmp_path: Path) -> None:
    from nvflare.app_common.shareablegenerators.full_model_shareable_generator import (
        FullModelShareableGenerator,
    )
    from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
    from nvflare.app_opt.pt.job_config.base_fed_job import BaseFedJob
    from nvflare.app_opt.pt.job_config.model import PTModel
    from nvflare.fuel.utils.constants import FrameworkType
    from nvflare.job_config.script_runner import ScriptRunner

    record = tmp_path / "record.jsonl"
    job = BaseFedJob(name="robust", min_clients=3)
    persistor = job.to_server(PTModel(TinyNet()))["persistor_id"]
    generator = job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    aggregator = job.to_server(CheckedRobustAggregator(record=str(record)), id="aggregator")
    job.to_server(
        ScatterAndGather(
            min_clients=3,
            num_rounds=2,
            wait_time_after_min_received=0,
            aggregator_id=aggregator,
            persistor_id=persistor,
            shareable_generator_id=generator,
        )
    )
    job.to_clients(
        ScriptRunner(script=str(HERE / "nvflare_train.py"), framework=FrameworkType.PYTORCH)
    )
    job.export_job(str(tmp_path / "jobs"))
    ws = tmp_path / "ws"
    ws.mkdir()
    log = simulate(tmp_path / "jobs" / "robust", ws, 3)
    rows = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["round"], r["n"]) for r in rows] == [(0, 3), (1, 3)], log[-3000:]
    for r in rows:
        assert r["spread"] > 0.005 and r["max_diff"] < 1e-6, r  # replies differ; the rule's output
