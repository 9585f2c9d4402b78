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
import shutil
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


@pytest.mark.slow
def test_simulator_plaintext_job_commits_each_round_on_anvil(
    tmp_path: Path, anvil_url: str
) -> None:
    """A job whose config holds the chain as JSON (a node URL, the registry, the key's
    environment variable): the sites sign their results with SignContribution (one key file
    per site), RobustAggregator commits both rounds, and each audits from the node."""
    from eth_account import Account
    from nvflare.app_common.shareablegenerators.full_model_shareable_generator import (
        FullModelShareableGenerator,
    )
    from nvflare.app_common.workflows.scatter_and_gather import ScatterAndGather
    from nvflare.app_opt.pt.job_config.base_fed_job import BaseFedJob
    from nvflare.app_opt.pt.job_config.model import PTModel
    from nvflare.fuel.utils.constants import FrameworkType
    from nvflare.job_config.defs import FilterType
    from nvflare.job_config.script_runner import ScriptRunner
    from test_cli import ANVIL_KEY

    from bcfl_engine.chain import Ledger
    from bcfl_engine.integrations.nvflare_chain import SignContribution
    from bcfl_engine.integrations.nvflare_robust import RobustAggregator
    from bcfl_engine.round import audit
    from bcfl_engine.updates import keccak256

    owner = Ledger.connect(anvil_url, key=ANVIL_KEY)
    keys = tmp_path / "keys"
    keys.mkdir()
    sites = []
    for i in (1, 2, 3):
        key = keccak256(b"nvflare sim site %d" % i)
        (keys / f"site-{i}.key").write_text(key.hex())
        sites.append(Account.from_key(key).address)
    task = owner.create_task(aggregator=owner.sender, participants=sites, model_spec=b"sim")
    store = tmp_path / "store"
    job = BaseFedJob(name="chained", min_clients=3)
    persistor = job.to_server(PTModel(TinyNet()))["persistor_id"]
    generator = job.to_server(FullModelShareableGenerator(), id="shareable_generator")
    aggregator = job.to_server(
        RobustAggregator(
            rule="median", f=1, expected_data_kind="WEIGHTS", ledger=anvil_url, registry=owner.address,
            key_env="BCFL_TEST_CHAIN_KEY", task=task, participants=sites, store=str(store),
        ),
        id="aggregator",
    )  # fmt: skip
    job.to_server(
        ScatterAndGather(
            min_clients=3, num_rounds=2, wait_time_after_min_received=0,
            aggregator_id=aggregator, persistor_id=persistor, shareable_generator_id=generator,
        )
    )  # fmt: skip
    job.to_clients(
        ScriptRunner(script=str(HERE / "nvflare_train.py"), framework=FrameworkType.PYTORCH)
    )
    job.to_clients(
        SignContribution(task, owner.chain_id, owner.address, key_file=str(keys / "{site}.key")),
        filter_type=FilterType.TASK_RESULT,
        tasks=["train"],  # named: NVFlare 2.9 applies no result filter listed under "*"
    )
    job.export_job(str(tmp_path / "jobs"))
    # The exporter copies the source of components outside site-packages into custom/: this
    # checkout's editable install; the copy (only the modules it traced) would shadow it.
    shutil.rmtree(
        tmp_path / "jobs" / "chained" / "app" / "custom" / "bcfl_engine", ignore_errors=True
    )
    ws = tmp_path / "ws"
    ws.mkdir()
    os.environ["BCFL_TEST_CHAIN_KEY"] = ANVIL_KEY
    try:
        log = simulate(tmp_path / "jobs" / "chained", ws, 3)
    finally:
        del os.environ["BCFL_TEST_CHAIN_KEY"]
    reader = Ledger.connect(anvil_url, address=owner.address)
    for r in (1, 2):
        record = reader.record(task, r)
        assert record is not None and record.n == 3, log[-3000:]
        report = audit(reader, task, r, store)
        assert report.ok, report.summary()
    assert "not committed" not in log
