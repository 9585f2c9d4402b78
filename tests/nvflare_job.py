"""Pieces of the NVFlare simulator jobs of tests/test_nvflare_sim.py, importable by the
simulator's server and clients (the test puts this folder on their PYTHONPATH)."""

from __future__ import annotations

import json
from typing import Any

import torch
from nvflare.apis.dxo import from_shareable
from nvflare.apis.fl_context import FLContext
from nvflare.apis.shareable import Shareable
from nvflare.app_common.app_constant import AppConstants

from bcfl_engine import rules
from bcfl_engine.integrations.nvflare import HEInTimeAccumulateWeightedAggregator
from bcfl_engine.integrations.nvflare_robust import RobustAggregator


class TinyNet(torch.nn.Module):
    """4,160 parameters in 4 layers."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 48)
        self.fc2 = torch.nn.Linear(48, 20)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(torch.relu(self.fc1(x)))


def _stock() -> Any:
    from nvflare.app_opt.he.intime_accumulate_model_aggregator import (
        HEInTimeAccumulateWeightedAggregator as Stock,
    )

    return Stock


class CheckedHEAggregator(HEInTimeAccumulateWeightedAggregator):
    """The engine's HE aggregator that also feeds NVFlare's the same contributions, and writes
    per round to ``record`` (JSON lines) whether the two aggregates are byte-identical."""

    def __init__(self, record: str, expected_data_kind: str = "WEIGHTS") -> None:
        super().__init__(expected_data_kind=expected_data_kind)
        self.record = record
        self.stock = _stock()(expected_data_kind=expected_data_kind)

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        self.stock.handle_event(event_type, fl_ctx)

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        ours = super().accept(shareable, fl_ctx)  # first: reads the bytes before NVFlare's loads
        helpers = [a.aggregation_helper for a in self.dxo_aggregators.values()]
        self.wire = all(getattr(h, "rebuilt", 1) == 0 for h in helpers)
        stock = self.stock.accept(shareable, fl_ctx)
        if ours != stock:
            self._write({"accept": [ours, stock]})
        return bool(ours)

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        ours = super().aggregate(fl_ctx)
        stock = self.stock.aggregate(fl_ctx)
        a, b = from_shareable(ours), from_shareable(stock)
        same = list(a.data) == list(b.data) and a.meta == b.meta
        same = same and all(
            a.data[k].serialize() == b.data[k].serialize()
            if hasattr(a.data[k], "serialize")
            else bool((a.data[k] == b.data[k]).all())
            for k in a.data
        )
        encrypted = sum(hasattr(v, "serialize") for v in a.data.values())
        self._write(
            {
                "round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
                "same": same,
                "encrypted": encrypted,
                "wire": self.wire,
            }
        )
        return ours

    def _write(self, row: dict) -> None:
        with open(self.record, "a") as f:
            f.write(json.dumps(row) + "\n")


class CheckedRobustAggregator(RobustAggregator):
    """RobustAggregator that keeps each accepted contribution's arrays and writes per round to
    ``record`` how far its aggregate is from the rule's torch reference on them."""

    def __init__(self, record: str, rule: str = "median", f: int = 0) -> None:
        super().__init__(rule=rule, f=f, expected_data_kind="WEIGHTS")
        self.record = record
        self.rows: list[torch.Tensor] = []

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        ok = super().accept(shareable, fl_ctx)
        if ok:
            data = from_shareable(shareable).data
            self.rows.append(
                torch.cat([torch.as_tensor(data[k]).reshape(-1) for k in sorted(data)])
            )
        return bool(ok)

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        out = super().aggregate(fl_ctx)
        data = from_shareable(out).data
        got = torch.cat([torch.as_tensor(data[k]).reshape(-1) for k in sorted(data)])
        info = rules.get(self.rule)
        kw = {"f": self.f} if info.takes_f else {}
        want = info.reference(torch.stack(self.rows).float(), **kw)
        row = {
            "round": fl_ctx.get_prop(AppConstants.CURRENT_ROUND),
            "n": len(self.rows),
            "max_diff": float((got.float() - want).abs().max()),
            "spread": float(torch.stack(self.rows).std(0).max()),
        }
        self.rows = []
        with open(self.record, "a") as f:
            f.write(json.dumps(row) + "\n")
        return out
