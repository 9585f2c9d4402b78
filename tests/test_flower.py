"""Flower integration: the Message API strategy, the legacy strategy, and the example app
run in Flower's Simulation Runtime."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import assert_close, make_updates

from bcfl_engine import rules
from bcfl_engine.errors import InvalidArgument

pytest.importorskip("flwr")
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict

from bcfl_engine.integrations.flower import RECORD_KEY, EngineFedAvg, sign_reply
from bcfl_engine.integrations.flower_legacy import LegacyEngineFedAvg

ROOT = Path(__file__).resolve().parents[1]
N = 5  # prime
SHAPES = [(3, 4), (5,), (2,)]  # 19 parameters in three arrays, not a power of two


def client_arrays(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    flat = make_updates(n, sum(int(np.prod(s)) for s in SHAPES), seed=seed).numpy()
    out = []
    for row in flat:
        arrays, at = [], 0
        for s in SHAPES:
            size = int(np.prod(s))
            arrays.append(row[at : at + size].reshape(s).copy())
            at += size
        out.append(arrays)
    return out


def reply(node: int, arrays: list[np.ndarray], weight: int, extra: dict | None = None) -> Message:
    content = RecordDict(
        {
            "arrays": ArrayRecord({f"p{j}": Array(a) for j, a in enumerate(arrays)}),
            "metrics": MetricRecord({"num-examples": weight}),
            **(extra or {}),
        }
    )
    meta = Metadata(
        run_id=1,
        message_id=f"m{node}",
        src_node_id=node,
        dst_node_id=0,
        reply_to_message_id=f"i{node}",
        group_id="1",
        created_at=time.time(),
        ttl=60.0,
        message_type="train",
    )
    return Message(content, metadata=meta)


def reference(
    rule: str, f: int, arrays: list[list[np.ndarray]], weights: list[int]
) -> torch.Tensor:
    x = torch.tensor(np.stack([np.concatenate([a.reshape(-1) for a in c]) for c in arrays]))
    info = rules.get(rule)
    kw = {} if rule == "mean" else {"f": f}
    if info.weighted:
        kw["weights"] = torch.tensor(weights, dtype=torch.float64)
    return info.reference(x, **kw)


CASES = [("mean", 0), ("median", 2), ("trimmed_mean", 1), ("geometric_median", 2), ("krum", 1)]


def _have(rule: str) -> bool:
    return importlib.util.find_spec(f"bcfl_engine.rules.{rule}") is not None


@pytest.mark.parametrize(("rule", "f"), CASES, ids=[f"{r}-f{f}" for r, f in CASES])
def test_message_api_strategy_aggregates_with_the_engine(rule, f):
    if not _have(rule):
        pytest.skip(f"rule {rule} is not in this build yet")
    arrays, weights = client_arrays(N, seed=1), [3, 1, 4, 1, 5]
    strategy = EngineFedAvg(rule, f)
    out, metrics = strategy.aggregate_train(
        1, [reply(i, a, w) for i, (a, w) in enumerate(zip(arrays, weights, strict=True))]
    )
    assert list(out.keys()) == ["p0", "p1", "p2"]
    got = [out[k].numpy() for k in out]
    assert [g.shape for g in got] == SHAPES and all(g.dtype == np.float32 for g in got)
    flat = torch.tensor(np.concatenate([g.reshape(-1) for g in got]))
    tol = (1e-4, 1e-5) if rule == "geometric_median" else (1e-5, 1e-6)  # iterative, stops at 1e-6
    assert_close(flat, reference(rule, f, arrays, weights), *tol)
    assert metrics is not None


def test_message_api_mean_matches_flower_fedavg():
    from flwr.serverapp.strategy import FedAvg

    arrays, weights = client_arrays(N, seed=2), [2, 7, 1, 8, 2]
    replies = [reply(i, a, w) for i, (a, w) in enumerate(zip(arrays, weights, strict=True))]
    ours, _ = EngineFedAvg("mean").aggregate_train(1, replies)
    theirs, _ = FedAvg().aggregate_train(1, replies)
    for k in theirs:
        np.testing.assert_allclose(ours[k].numpy(), theirs[k].numpy(), rtol=1e-5, atol=1e-6)


def test_message_api_rejects_mismatched_arrays_and_bad_settings():
    arrays = client_arrays(3)
    replies = [reply(i, a, 1) for i, a in enumerate(arrays)]
    replies[2] = reply(2, arrays[2][:2], 1)
    from flwr.serverapp.exception import InconsistentMessageReplies

    with pytest.raises(InconsistentMessageReplies, match="same keys"):  # Flower's own check
        EngineFedAvg("median").aggregate_train(1, replies)
    with pytest.raises(InvalidArgument, match="pre-aggregation"):
        EngineFedAvg("clip")
    with pytest.raises(InvalidArgument, match="rule must be 'mean'"):
        EngineFedAvg("median", secure="ckks")
    with pytest.raises(InvalidArgument, match="unknown rule"):
        EngineFedAvg("fedsomething")
    assert EngineFedAvg("median").aggregate_train(1, []) == (None, None)


def test_legacy_strategy_aggregate_fit():
    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    arrays, weights = client_arrays(N, seed=3), [1, 2, 3, 4, 5]
    results = [
        (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), w, {}))
        for a, w in zip(arrays, weights, strict=True)
    ]
    for rule, f in [("mean", 0), ("median", 1)]:
        if not _have(rule):
            continue
        params, _ = LegacyEngineFedAvg(rule, f).aggregate_fit(1, results, [])
        flat = torch.tensor(np.concatenate([a.reshape(-1) for a in parameters_to_ndarrays(params)]))
        assert_close(flat, reference(rule, f, arrays, weights))
    assert LegacyEngineFedAvg().aggregate_fit(1, [], []) == (None, {})
    strict = LegacyEngineFedAvg(accept_failures=False)
    assert strict.aggregate_fit(1, results, [RuntimeError("lost")]) == (None, {})


def test_message_api_strategy_commits_signed_rounds_to_the_chain(tmp_path):
    pytest.importorskip("web3")
    from eth_account import Account

    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound, audit
    from bcfl_engine.updates import keccak256

    keys = [keccak256(b"flower test %d" % i) for i in range(N)]
    addresses = [Account.from_key(k).address for k in keys]
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=addresses, model_spec=b"t")
    arrays = client_arrays(N, seed=4)

    def rounds(r: int) -> AggregationRound:
        return AggregationRound(
            ledger, task, r, tmp_path, participants=addresses, dim=19, rule="mean"
        )

    strategy = EngineFedAvg("mean", rounds=rounds)
    signed = [
        reply(i, a, i + 1, {RECORD_KEY: sign_reply(a, keys[i], task, 1, ledger.domain, i + 1)})
        for i, a in enumerate(arrays)
    ]
    out, _ = strategy.aggregate_train(1, signed)
    flat = torch.tensor(np.concatenate([out[k].numpy().reshape(-1) for k in out]))
    assert_close(flat, reference("mean", 0, arrays, [1, 2, 3, 4, 5]))
    assert ledger.record(task, 1).n == N and audit(ledger, task, 1, tmp_path).ok
    # Round 2: node 1 forges client 1's signature, node 3 sends none: both are left out.
    signed = [
        reply(i, a, i + 1, {RECORD_KEY: sign_reply(a, keys[i], task, 2, ledger.domain, i + 1)})
        for i, a in enumerate(arrays)
    ]
    signed[1].content[RECORD_KEY] = ConfigRecord(
        {"address": addresses[1], "signature": signed[0].content[RECORD_KEY]["signature"]}
    )
    signed[3] = reply(3, arrays[3], 4)
    out, _ = strategy.aggregate_train(2, signed)
    assert [r.split(":")[0] for r in strategy.rejected[2]] == ["node 1", "node 3"]
    assert "no signature" in strategy.rejected[2][1]
    kept = [arrays[i] for i in (0, 2, 4)]
    flat = torch.tensor(np.concatenate([out[k].numpy().reshape(-1) for k in out]))
    assert_close(flat, reference("mean", 0, kept, [1, 3, 5]))
    assert ledger.record(task, 2).n == 3 and audit(ledger, task, 2, tmp_path).ok
    # Round 3: no reply is signed: no model, nothing committed, and no exception
    assert strategy.aggregate_train(3, [reply(i, a, 1) for i, a in enumerate(arrays)]) == (
        None,
        None,
    )
    assert len(strategy.rejected[3]) == N and ledger.history(task)[-1].round == 2
    # Server round 4 collects registry round 3, still open. Client 0 signs a second reply with
    # other arrays: that one alone is left out (a duplicate), nothing raises.
    signed = [
        reply(i, a, i + 1, {RECORD_KEY: sign_reply(a, keys[i], task, 3, ledger.domain, i + 1)})
        for i, a in enumerate(arrays)
    ]
    twice = sign_reply(arrays[1], keys[0], task, 3, ledger.domain, 1)
    signed.append(reply(N, arrays[1], 1, {RECORD_KEY: twice}))
    out, _ = strategy.aggregate_train(4, signed)
    assert out is not None and [r.split(":")[0] for r in strategy.rejected[4]] == [f"node {N}"]
    assert "already submitted" in strategy.rejected[4][0]
    assert ledger.record(task, 3).n == N and audit(ledger, task, 3, tmp_path).ok

    from flwr.common import Code, FitRes, Status, ndarrays_to_parameters, parameters_to_ndarrays

    from bcfl_engine.integrations.flower_legacy import ADDRESS_KEY, SIGNATURE_KEY

    results = []
    for i, a in enumerate(arrays):
        sig = sign_reply(a, keys[i], task, 3, ledger.domain, i + 1)
        metrics = {ADDRESS_KEY: sig["address"], SIGNATURE_KEY: sig["signature"]}
        results.append(
            (None, FitRes(Status(Code.OK, ""), ndarrays_to_parameters(a), i + 1, metrics))
        )
    params, _ = LegacyEngineFedAvg(rounds=rounds).aggregate_fit(3, results, [])
    flat = torch.tensor(np.concatenate([a.reshape(-1) for a in parameters_to_ndarrays(params)]))
    assert_close(flat, reference("mean", 0, arrays, [1, 2, 3, 4, 5]))
    assert ledger.record(task, 3).n == N and audit(ledger, task, 3, tmp_path).ok


@pytest.mark.slow
def test_example_app_runs_in_flowers_simulation(tmp_path):
    """The example in Flower's Simulation Runtime (Ray): 4 hospitals, one sign-flipping,
    2 rounds of median, each committed to a chain and audited."""
    pytest.importorskip("ray", reason="Flower's simulation needs flwr[simulation] (Ray)")
    out = tmp_path / "run"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "flower_app" / "simulate.py"), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=400,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads((out / "result.json").read_text())
    assert result["audits"] == {"1": True, "2": True}
    assert len(result["roots"]) == 2 and len(set(result["roots"].values())) == 2
    assert result["accuracy"]["2"] > 0.85, result  # the sign-flipping hospital is outvoted


def test_ckks_strategy_sums_ciphertexts_and_clients_decrypt_the_mean():
    he = pytest.importorskip("bcfl_engine.he")
    if not hasattr(he, "encrypt"):
        pytest.skip("bcfl_engine.he has no encrypt in this build yet")
    from bcfl_engine.integrations.flower import decrypt_global, encode_arrays

    keys = he.generate_keys("default")
    public = keys.public_context()
    arrays, weights = client_arrays(3, seed=5), [3, 1, 2]
    replies = []
    for i, (a, w) in enumerate(zip(arrays, weights, strict=True)):
        flat = np.frombuffer(encode_arrays(a), dtype="<f4")
        content = RecordDict(
            {
                "metrics": MetricRecord({"num-examples": w}),
                RECORD_KEY: ConfigRecord({"ckks": he.encrypt(flat, public)}),
            }
        )
        replies.append(reply(i, a, w, None))
        replies[-1] = Message(content, metadata=replies[-1].metadata)
    strategy = EngineFedAvg("mean", secure="ckks", he_context=public)
    out, _ = strategy.aggregate_train(1, replies)
    got = decrypt_global(out, keys.secret_context, arrays[0])
    assert [g.shape for g in got] == SHAPES
    flat = torch.tensor(np.concatenate([g.reshape(-1) for g in got]))
    # the mean of ciphertexts is within the preset's precision of the plaintext mean
    assert_close(flat, reference("mean", 0, arrays, weights), 0, 2 * keys.preset.precision + 1e-7)
    with pytest.raises(InvalidArgument, match="he_context"):
        EngineFedAvg("mean", secure="ckks")


def test_ckks_strategy_leaves_out_a_malformed_or_mismatched_ciphertext(caplog):
    """One hostile reply (a cut ciphertext, or one of another length) is named and left out;
    the others are summed, bit for bit as he.aggregate sums them on their own."""
    he = pytest.importorskip("bcfl_engine.he")
    import logging

    keys = he.generate_keys("default")
    public = keys.public_context()
    arrays, weights = client_arrays(4, seed=6), [3, 1, 2, 5]
    blobs = [he.encrypt(np.concatenate([x.reshape(-1) for x in a]), public) for a in arrays]
    blobs[1] = blobs[1][: len(blobs[1]) // 2]  # truncated
    blobs[3] = he.encrypt(np.ones(10_000, dtype=np.float32), public)  # another length
    replies = []
    for i, (a, w, blob) in enumerate(zip(arrays, weights, blobs, strict=True)):
        content = RecordDict(
            {
                "metrics": MetricRecord({"num-examples": w}),
                RECORD_KEY: ConfigRecord({"ckks": blob}),
            }
        )
        replies.append(Message(content, metadata=reply(i, a, w).metadata))
    strategy = EngineFedAvg("mean", secure="ckks", he_context=public)
    with caplog.at_level(logging.WARNING):
        out, _ = strategy.aggregate_train(1, replies)
    assert "node 1" in caplog.text and "node 3" in caplog.text and "node 0" not in caplog.text
    want = he.aggregate([blobs[0], blobs[2]], weights=[3, 2], context=public)
    assert strategy.last_result == want
    assert float(out["bcfl-ckks-weight"].numpy()[0]) == 5.0
