"""``bcfl demo --aggregators M --quorum T [--dishonest-aggregator]``: M aggregator replicas.

Every hospital sends each payload (with its own salt, so every replica builds the same leaves)
to every replica, all in the demo's one loop, so every replica accepts them in one order
(replicas that are separate processes submit in :func:`~bcfl_engine.chain.quorum.replica_order`
instead); each replica is an :class:`~bcfl_engine.round.AggregationRound` on its own
store and key that attests the round it computed; a round is final when T of them attested the
same tuple (:mod:`bcfl_engine.chain.quorum`). The dishonest replica (aggregator 2) aggregates
with another rule than the task's (FedAvg for a robust rule, the median for FedAvg): it votes
between the two honest ones and is named as evidence when the round becomes final.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import InvalidArgument
from ..updates import keccak256

DISHONEST = 1  # the index of the dishonest replica: aggregator 2 votes between the honest ones


def dishonest_rule(rule: str) -> str:
    """What the dishonest replica runs instead of ``rule``."""
    return "median" if rule == "mean" else "mean"


class Replicas:
    """The demo's aggregators: replica 0 is the demo's own ledger and store, the others are
    funded accounts of the embedded chain with stores ``store-agg2``, ``store-agg3``, ..."""

    def __init__(self, ledger: Any, config: Any, out: Path) -> None:
        self.m = config.aggregators
        self.t = config.quorum if config.quorum is not None else self.m // 2 + 1
        self.dishonest = config.dishonest_aggregator
        if self.m < 1 or not 1 <= self.t <= self.m:
            raise InvalidArgument(f"--quorum must be in [1, --aggregators={self.m}]; got {self.t}")
        if self.m > 1 and (config.chain is not None or config.secure is not None):
            raise InvalidArgument(
                "--aggregators > 1 runs its replicas on the embedded chain, in plaintext "
                "(no --chain, no --secure)"
            )
        if self.dishonest and self.m < 2:
            raise InvalidArgument("--dishonest-aggregator needs --aggregators >= 2")
        self.ledgers = [ledger] + [ledger.as_sender(k) for k in ledger.dev_keys[1 : self.m]]
        if len(self.ledgers) < self.m:
            raise InvalidArgument(f"the embedded chain funds {len(self.ledgers)} aggregators")
        self.stores = [out / "store"] + [out / f"store-agg{i + 1}" for i in range(1, self.m)]
        for store in self.stores[1:]:
            if store.exists():
                shutil.rmtree(store)  # an earlier embedded chain's rounds

    def describe(self) -> str:
        """Who aggregates, and what makes a round final."""
        names = [
            f"agg{i + 1} {a.sender}"
            + (" (dishonest: another rule)" if self.dishonest and i == DISHONEST else "")
            for i, a in enumerate(self.ledgers)
        ]
        return (
            f"{self.m} aggregators, a round is final when {self.t} attest the same tuple: "
            + "; ".join(names)
        )

    def task_kw(self) -> dict[str, Any]:
        """How ``create_task`` names the task's aggregators."""
        if self.m == 1:
            return {"aggregator": self.ledgers[0].sender}
        return {"aggregators": [a.sender for a in self.ledgers], "threshold": self.t}

    def others(self, make: Callable[..., Any], rule: str) -> list[Any]:
        """The rounds of replicas 1..m-1, made by ``make(ledger, store, rule)``."""
        return [
            make(a, s, dishonest_rule(rule) if self.dishonest and i == DISHONEST else rule)
            for i, (a, s) in enumerate(zip(self.ledgers, self.stores, strict=True))
            if i > 0
        ]

    def salted(self, payload: Any, task: int, round: int, client: int) -> Any:
        """``payload`` with the hospital's own salt (the same at every replica)."""
        if self.m == 1:
            return payload
        salt = keccak256(b"demo salt %d %d %d" % (task, round, client) + payload.signature)
        return dataclasses.replace(payload, salt=salt)

    def finalize(self, first: Any, others: list[Any]) -> tuple[Any, str]:
        """Finalize replica 0, then the others in seat order; the result of replica 0 and a
        line saying who attested what."""
        res = first.finalize()
        for rnd in others:
            rnd.finalize()
        if self.m == 1:
            return res, ""
        ledger, task, round = self.ledgers[0], first.task, first.round
        status = ledger.round_status(task, round)
        names = {a.sender: f"agg{i + 1}" for i, a in enumerate(self.ledgers)}
        agreed = [names[a] for a in status.attested(status.final)] if status.final else []
        line = f"final by {'+'.join(agreed)}" if status.final else "NOT final"
        if status.conflicts:
            line += ", evidence against " + "+".join(names[c.aggregator] for c in status.conflicts)
        return res, line
