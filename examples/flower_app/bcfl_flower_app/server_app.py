"""The aggregator: Flower's ServerApp with bcfl_engine's strategy and a chain commit per round."""

from __future__ import annotations

import json
from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from bcfl_engine.chain import Ledger
from bcfl_engine.integrations.flower import EngineFedAvg
from bcfl_engine.round import AggregationRound, audit
from bcfl_engine.store import PayloadStore

from .task import SEED, federated, hospital_addresses, trainer


def make_server_app(
    num_partitions: int, rule: str = "median", f: int = 1, rounds: int = 2, out: str = "flower-run"
) -> ServerApp:
    """A ServerApp that aggregates with ``rule`` (tolerating ``f`` Byzantine hospitals),
    commits every round to an embedded chain, audits it, and writes ``out/result.json``."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        fed = federated(num_partitions)
        tr = trainer(num_partitions)
        addresses = hospital_addresses(num_partitions)
        ledger = Ledger.embedded()
        task = ledger.create_task(
            aggregator=ledger.sender, participants=addresses, model_spec=b"logreg"
        )
        store = PayloadStore(Path(out) / "store")

        strategy = EngineFedAvg(rule, f, fraction_evaluate=0.0, min_available_nodes=num_partitions)

        def make_round(server_round: int) -> AggregationRound:
            # the round aggregates with the strategy's rule, f and parameters
            return AggregationRound(
                ledger,
                task,
                server_round,
                store,
                participants=addresses,
                dim=tr.dim,
                **strategy.round_options,
            )

        strategy.rounds = make_round

        def evaluate(server_round: int, arrays: ArrayRecord) -> MetricRecord:
            params = tr.spec.flatten(arrays.to_torch_state_dict())
            return MetricRecord({"accuracy": tr.score(params, *fed.test)})

        train_config = ConfigRecord(
            {"bcfl-task": task, "bcfl-chain-id": ledger.chain_id, "bcfl-registry": ledger.address}
        )
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(tr.spec.unflatten(tr.initial(SEED))),
            num_rounds=rounds,
            train_config=train_config,
            evaluate_fn=evaluate,
        )
        summary = {
            "rule": rule,
            "accuracy": {
                r: float(m["accuracy"]) for r, m in result.evaluate_metrics_serverapp.items()
            },
            "roots": {r.round: "0x" + r.updates_root.hex() for r in ledger.history(task)},
            "audits": {r: audit(ledger, task, r, store).ok for r in range(1, rounds + 1)},
        }
        Path(out).mkdir(parents=True, exist_ok=True)
        (Path(out) / "result.json").write_text(json.dumps(summary, indent=1))

    return app
