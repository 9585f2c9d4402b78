"""The demo's rounds loop: every rule compared on the same hospitals, each round on the chain.

For each rule (plus an attack-free FedAvg run as the reference, and an encrypted FedAvg run
under ``--secure ckks``) the loop keeps its own global model and, each round: every hospital
trains from that model (a Byzantine one attacks), encodes its update (float32, or a CKKS
ciphertext under the hospitals' multiparty key, :mod:`.keys`), signs it and submits it to an
:class:`~bcfl_engine.round.AggregationRound`, which stores it, aggregates (under CKKS the
hospitals then decrypt the sum together), and commits the round's Merkle root and result
digest to the ledger. Rules run in lockstep, so a table per round compares them as the run goes.
"""

from __future__ import annotations

import json
import shlex
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..errors import BudgetExceeded, InvalidArgument, PreconditionError
from ..round import AggregationRound, encode_update, sign_payload
from ..store import PayloadStore
from ..updates import keccak256
from . import attacks, data, private, train
from . import keys as mpkeys
from .plot import plot
from .quorum import Replicas

Echo = Callable[[str], None]
CHAIN_DIR = "chain"  # where the embedded chain's journal goes, in the output folder


@dataclass
class DemoConfig:
    """What ``bcfl demo`` runs; the defaults finish in well under two minutes on 2 CPU cores."""

    rules: list[str] = field(
        default_factory=lambda: ["mean", "median", "trimmed_mean", "krum", "geometric_median"]
    )
    secure: str | None = None
    threshold: int | None = None
    clients: int = 10
    byzantine: float = 0.2
    rounds: int = 10
    chain: str | None = None
    key: str | None = None
    out: str = "bcfl-demo"
    seed: int = 0
    dataset: str = "breast_cancer"
    attack: str = "mix"
    progress: bool = True
    hidden: int = 0
    epochs: int | None = None  # local SGD; None: the data set's (demo/train.py)
    lr: float | None = None
    dp_noise: float | None = None  # with it, a FedAvg line with central DP (.private)
    dp_clip: float | None = None
    dp_budget: float | None = None
    aggregators: int = 1  # > 1: replicas on their own stores and keys (demo/quorum.py)
    quorum: int | None = None  # how many agreeing replicas make a round final (majority)
    dishonest_aggregator: bool = False


@dataclass
class Run:
    """One compared line: a rule, whether hospitals attack, whether updates are encrypted."""

    label: str
    rule: str
    attacked: bool
    secure: str | None
    f: int
    params: torch.Tensor
    task: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    dp: Any = None  # a GaussianDP for the private line
    stopped: int | None = None  # the round its budget refused


def hospital_keys(n: int, seed: int) -> list[bytes]:
    """Deterministic secp256k1 keys of the demo's hospitals (never use such keys for real)."""
    return [keccak256(f"bcfl-demo hospital {seed} {i}".encode()) for i in range(n)]


def rule_f(rule: str, n_byzantine: int) -> int:
    """The ``f`` the demo gives ``rule`` with ``n_byzantine`` Byzantine hospitals (FedAvg: 0)."""
    return 0 if rule == "mean" else n_byzantine


def check_preconditions(config: DemoConfig) -> None:
    """PreconditionError, before any work, if a rule cannot tolerate the configured attackers.

    ``f`` is the demo's own (:func:`rule_f` of :func:`~.attacks.byzantine_count`); the
    condition is the rule's, from :func:`bcfl_engine.rules.get`.
    """
    from .. import rules

    n = config.clients
    n_byzantine = attacks.byzantine_count(n, config.byzantine)
    for name in config.rules:
        info = rules.get(name)
        f = rule_f(name, n_byzantine)
        try:
            info.check_precondition(n, f)
        except PreconditionError as exc:
            pre = info.precondition
            hint = (
                ""
                if pre is None
                else f"; with f={f} it needs at least {pre.min_clients(f)} hospitals, "
                f"and {n} hospitals tolerate at most f={pre.max_f(n)}"
            )
            raise PreconditionError(
                f"{exc} (--clients {n} --byzantine {config.byzantine} gives f={f} Byzantine "
                f"hospitals){hint}"
            ) from None
        if config.secure == "ckks":
            mpkeys.check_buckets(name, n, f)


def audit_command(chain: str, task: int, round: int, store: Path) -> str:
    """The ``bcfl audit`` command line that rechecks ``round`` of ``task``."""
    words = ["bcfl", "audit", "--chain", chain, "--task", str(task), "--round", str(round)]
    return shlex.join([*words, "--store", str(store)])


def _audited_run(runs: list[Run]) -> Run:
    """The run whose audit command the demo prints: a robust rule under attack if any."""
    plain = [run for run in runs if run.secure is None] or runs
    return next((run for run in plain if run.attacked and run.rule != "mean"), plain[0])


def _ledger(config: DemoConfig, out: Path) -> Any:
    from ..chain import Ledger

    if config.chain is None:
        return Ledger.embedded(journal=out / CHAIN_DIR)
    if not config.key:
        raise InvalidArgument(
            "--chain URL needs a funded key: pass --key HEX or set BCFL_CHAIN_KEY"
        )
    return Ledger.connect(config.chain, key=config.key)


def plan_runs(config: DemoConfig, n_byzantine: int, initial: torch.Tensor) -> list[Run]:
    """The lines compared: each rule under attack, FedAvg without attack, and under CKKS each
    rule again on encrypted updates (FedAvg a decrypted sum, a robust rule bucketed)."""
    if config.secure not in (None, "ckks"):
        raise InvalidArgument(f"secure must be None or 'ckks'; got {config.secure!r}")
    attacked = n_byzantine > 0
    runs = []
    if attacked:
        runs.append(Run("mean, no attack", "mean", False, None, 0, initial.clone()))
    for rule in config.rules:
        runs.append(Run(rule, rule, attacked, None, rule_f(rule, n_byzantine), initial.clone()))
    if config.secure == "ckks":
        for rule in config.rules:
            f = rule_f(rule, n_byzantine)
            runs.append(Run(f"{rule}, ckks", rule, attacked, "ckks", f, initial.clone()))
    dp = private.mechanism(config.dp_noise, config.dp_clip, config.dp_budget, config.clients)
    if dp is not None:
        runs.append(Run(private.LABEL, "mean", False, None, 0, initial.clone(), dp=dp))
    return runs


def _tenseal() -> Any:
    import tenseal

    return tenseal


def _table(round_no: int, rounds: int, runs: list[Run], metric: str) -> str:
    lines = [
        f"round {round_no}/{rounds}",
        f"  {'rule':<22} {metric:>9} {'epsilon':>8} {'bucket':>6} {'agg ms':>9} {'gas':>7}  root",
    ]
    for run in runs:
        h = run.history[-1]
        lines.append(
            f"  {run.label:<22} {h[metric]:>9.4f} {private.show(h['epsilon']):>8} "
            f"{h.get('bucket') or '-':>6} "
            f"{1e3 * h['aggregation_seconds']:>9.3f} "
            f"{h['gas']:>7}  {h['root'][:18]}..." + (f"  {h['quorum']}" if "quorum" in h else "")
        )
    return "\n".join(lines)


def run_demo(config: DemoConfig, echo: Echo = print) -> dict[str, Any]:
    """Run the demo; write ``summary.json`` and ``accuracy.png`` into ``config.out``."""
    from eth_account import Account
    from tqdm import tqdm

    check_preconditions(config)
    steps, lr = train.local_training(config.dataset, config.epochs, config.lr)
    config = replace(config, epochs=steps, lr=lr)  # summary.json says what ran
    fed = data.load(config.dataset, config.clients, seed=config.seed)
    trainer = train.Trainer(fed.n_features, fed.task, hidden=config.hidden, epochs=steps, lr=lr)
    byz = attacks.assign(config.clients, config.byzantine, config.attack, config.seed)
    runs = plan_runs(config, len(byz), trainer.initial(config.seed))
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    if config.chain is None and (out / "store").exists():
        shutil.rmtree(out / "store")  # its rounds belong to the embedded chain replaced now
    if config.chain is not None and (out / CHAIN_DIR / "chain.json").exists():
        shutil.rmtree(out / CHAIN_DIR)  # an earlier embedded chain's, no longer the store's
    store = PayloadStore(out / "store")
    ledger = _ledger(config, out)
    replicas = Replicas(ledger, config, out)
    keys = hospital_keys(config.clients, config.seed)
    addresses = [Account.from_key(k).address for k in keys]
    hospitals = epochs = None
    if config.secure == "ckks":
        hospitals = mpkeys.setup(keys, config.threshold)
        echo(hospitals.who_decrypts())
    for run in runs:
        run.task = ledger.create_task(
            **replicas.task_kw(),
            participants=addresses,
            model_spec=f"demo {run.label}".encode(),
        )
    if hospitals is not None:
        epochs = {run.task: hospitals.open(ledger, run.task) for run in runs if run.secure}
        ctx = _tenseal().context_from(hospitals.public)
    scale = fed.y_scale if fed.metric == "rmse" else 1.0
    echo(
        f"{fed.name}: {config.clients} hospitals ({', '.join(str(len(y)) for _, y in fed.clients)} patients), "
        f"Byzantine: {({f'h{i}': a for i, a in byz.items()}) or 'none'}; chain {ledger.address} (chain id {ledger.chain_id})"
    )
    if replicas.m > 1:
        echo(replicas.describe())
    total = config.rounds * len(runs) * config.clients
    bar = tqdm(
        total=total, desc="hospital updates", unit="upd", disable=not config.progress, leave=False
    )
    started = time.perf_counter()
    for r in range(1, config.rounds + 1):
        for run in runs:
            if run.stopped is not None:  # its budget is spent: the model stays as it was
                run.history.append(
                    {**run.history[-1], "round": r, "aggregation_seconds": 0.0, "gas": 0}
                )
                bar.update(config.clients)
                continue
            rnd = AggregationRound(
                ledger, run.task, r, store, participants=addresses, dim=trainer.dim, rule=run.rule, f=run.f,
                secure=run.secure, keys=epochs.get(run.task) if epochs else None, dp=run.dp,
            )  # fmt: skip
            others = replicas.others(
                lambda a, s, rule, run=run, r=r: AggregationRound(
                    a,
                    run.task,
                    r,
                    s,
                    participants=addresses,
                    dim=trainer.dim,
                    rule=rule,
                    f=run.f if rule == run.rule else 0,
                ),
                run.rule,
            )
            for i, (x, y) in enumerate(fed.clients):
                attack = byz.get(i) if run.attacked else None
                seed = config.seed * 1_000_003 + r * 1009 + i
                labels = attacks.poison_labels(y, fed.task) if attack == "label_flip" else y
                update = trainer.update(run.params, x, labels, seed)
                if attack:
                    update = attacks.corrupt(attack, update, seed)
                if run.secure == "ckks":  # lean payloads under the key the chain names
                    payload_bytes = mpkeys.encrypt(update, ctx, byzantine=attack is not None)
                else:
                    payload_bytes = encode_update(update)
                signed = sign_payload(
                    keys[i], run.task, r, payload_bytes, ledger.domain, weight=len(y)
                )
                signed = replicas.salted(signed, run.task, r, i)
                for replica in (rnd, *others):  # every replica receives every payload
                    replica.submit(signed)
                bar.update(1)
            bucket = None
            if run.secure == "ckks":
                assert hospitals is not None
                bucket = hospitals.decrypt(rnd, ledger, addresses).bucket_size
            try:
                res, attested = replicas.finalize(rnd, others)
            except BudgetExceeded as exc:
                run.stopped = r
                echo(f"{run.label}: {exc}")
                prior = run.history[-1] if run.history else None
                run.history.append(
                    {"round": r, fed.metric: prior[fed.metric] if prior else trainer.score(run.params, *fed.test) * scale,
                     "epsilon": prior["epsilon"] if prior else 0.0, "aggregation_seconds": 0.0, "gas": 0, "root": "-"}
                )  # fmt: skip
                continue
            if run.secure == "ckks" and bucket is None:  # the decrypted weighted sum
                summed = torch.as_tensor(res.update[: trainer.dim], dtype=torch.float64)
                total = sum(len(y) for _, y in fed.clients)
                agg = mpkeys.unscale(summed / total).to(torch.float32)
            elif run.secure == "ckks":  # the rule over the decrypted bucket means
                agg = mpkeys.unscale(
                    torch.as_tensor(res.update, dtype=torch.float32)[: trainer.dim]
                )
            else:
                agg = torch.as_tensor(res.update, dtype=torch.float32)
            run.params = run.params + agg
            score = trainer.score(run.params, *fed.test) * scale
            run.history.append(
                {"round": r, fed.metric: score, "epsilon": private.spent(run.dp, r), "bucket": bucket, "aggregation_seconds": res.seconds, "gas": res.gas_used, "root": "0x" + res.root.hex()}
                | ({"quorum": attested} if attested else {})
            )  # fmt: skip
        (bar.write if config.progress else echo)(_table(r, config.rounds, runs, fed.metric))
    bar.close()
    summary: dict[str, Any] = {
        "dataset": fed.name,
        "metric": fed.metric,
        "clients": config.clients,
        "byzantine_clients": {str(i): a for i, a in byz.items()},
        "chain": {
            "url": config.chain or "embedded",
            "chain_id": ledger.chain_id,
            "contract": ledger.address,
        },
        "config": asdict(config) | {"key": None},
        "seconds": time.perf_counter() - started,
        "runs": {
            run.label: {
                "rule": run.rule,
                "f": run.f,
                "attacked": run.attacked,
                "secure": run.secure,
                "task": run.task,
                "dp": private.summary(run.dp, run.stopped),
                "rounds": run.history,
            }
            for run in runs
        },
        "final": {run.label: run.history[-1][fed.metric] for run in runs},
        "epsilon": {run.label: run.history[-1]["epsilon"] for run in runs},
    }
    if hospitals is not None:
        summary["ckks"] = mpkeys.summary(hospitals, runs, config.rounds, echo)
    shown = _audited_run(runs)
    command = audit_command(
        config.chain or str(out / CHAIN_DIR), shown.task, config.rounds, out / "store"
    )
    summary["chain"]["audit_command"] = command
    encrypted = [run for run in runs if run.secure]  # a bucketed robust one first
    secure = next(
        (run for run in encrypted if run.rule != "mean"), encrypted[0] if encrypted else None
    )
    if secure is not None:  # its audit recombines the hospitals' stored decryption shares
        summary["chain"]["audit_command_secure"] = audit_command(
            config.chain or str(out / CHAIN_DIR), secure.task, config.rounds, out / "store"
        )
    (out / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True))
    plot(summary, out / "accuracy.png")
    better = "higher" if fed.metric == "accuracy" else "lower"
    echo(
        f"final {fed.metric} ({better} is better): "
        + ", ".join(f"{k} {v:.4f}" for k, v in summary["final"].items())
    )
    echo(f"wrote {out / 'summary.json'} and {out / 'accuracy.png'}; payloads in {out / 'store'}")
    where = "the node" if config.chain else f"the embedded chain, replayed from {out / CHAIN_DIR}"
    echo(f"recheck round {config.rounds} of {shown.label} against {where}:\n  {command}")
    if secure is not None:
        echo(
            f"and the encrypted round (its decryption included):\n  "
            f"{summary['chain']['audit_command_secure']}"
        )
    return summary
