"""benchmarks/durable.py: one tiny signed durable round and its parts (no timing asserted, only
that every part is there and the parts add up)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

pytest.importorskip("web3")
ROOT = Path(__file__).resolve().parents[1]


def load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("durable", ROOT / "benchmarks" / "durable.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("rule", ["mean", "median"])
def test_a_tiny_durable_round_reports_every_part(tmp_path, capsys, rule):
    durable = load()
    x = torch.randn(12, 33)
    parts = durable.durable_round(x, 1, rule=rule)
    assert set(durable.ORDER) <= set(parts)
    assert all(parts[k] >= 0 for k in durable.ORDER if k != "other")
    assert parts["total"] == pytest.approx(parts["submit_many"] + parts["finalize"])
    assert parts["floor"] == pytest.approx(
        parts["floor: write + fsync"] + parts["floor: commit tx"] + parts["floor: aggregate"]
    )
    named = sum(parts[k] for k in durable.ORDER[:6])
    assert named == pytest.approx(parts["total"])  # "other" is the rest, not a guess
    durable.report(parts, 12)
    out = capsys.readouterr().out
    assert "durable submits/s" in out and "round total / floor" in out


def test_the_benchmark_signer_signs_what_the_round_checks():
    from bcfl_engine.chain import Ledger, verify_payload
    from bcfl_engine.chain.signing import SignedPayload
    from bcfl_engine.protocol import payload_digest

    durable = load()
    ledger = Ledger.embedded()
    keys = [bytes([i + 1]) * 32 for i in range(3)]
    sign = durable.signer(keys, ledger, 5)
    p = sign(2, b"update", 9)
    signed = SignedPayload(5, 1, payload_digest(b"update"), p.client, p.signature, 9)
    assert (
        verify_payload(signed, task=5, round=1, participants=sign.addresses, domain=ledger.domain)
        == p.client.lower()
    )
