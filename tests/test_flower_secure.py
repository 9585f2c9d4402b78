"""Flower under a multiparty key: the strategy holds no key, the clients' key parties decrypt.

Six hospitals, three of them key parties; one hospital Byzantine. The strategy submits the
signed ciphertexts to a bucketed median round, sends each party's node a ``query`` message
through the Grid, the parties answer with their signed shares (``answer_decryption``), and the
result is the median of the bucket means as plaintext arrays, committed and audited. The Grid
here delivers messages in process, as Flower's delivers them between nodes.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("flwr")
pytest.importorskip("web3")
pytest.importorskip("tenseal")

import tenseal as ts
from eth_account import Account
from flwr.app import ArrayRecord, ConfigRecord, Message, Metadata, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from bcfl_engine import rules
from bcfl_engine.chain import Ledger
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he import multiparty as mp
from bcfl_engine.he.mpepoch import KeyEpoch, open_epoch, parties_of
from bcfl_engine.integrations.flower import RECORD_KEY, EngineFedAvg, encode_arrays
from bcfl_engine.integrations.flower_secure import answer_decryption, sign_ciphertext
from bcfl_engine.round import AggregationRound, audit
from bcfl_engine.updates import keccak256

N = 6
SHAPES = [(4, 5), (7,)]
KEYS = [keccak256(f"flower mp hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
NODES = [101 + i for i in range(N)]  # hospital i runs on node NODES[i]; parties 1..3 = h0..h2


@pytest.fixture
def setup(tmp_path) -> dict[str, Any]:
    parties = {i: mp.KeyShare.generate(party=i) for i in (1, 2, 3)}
    public, crs = mp.local_setup(list(parties.values()))
    described = parties_of(
        {i: p.commitment(crs) for i, p in parties.items()}, {i: ADDRESSES[i - 1] for i in parties}
    )
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"fl")
    keys = open_epoch(ledger, task, KeyEpoch(public, described, 3))

    def rounds(r: int) -> AggregationRound:
        return AggregationRound(ledger, task, r, tmp_path, participants=ADDRESSES, secure="ckks",
                                keys=keys, rule="median", f=1)  # fmt: skip

    return {"parties": parties, "keys": keys, "ledger": ledger, "task": task, "rounds": rounds,
            "store": tmp_path}  # fmt: skip


class InProcessGrid:
    """What the strategy asks of Flower's Grid: the nodes, and send_and_receive, which hands a
    query to the party on its node and returns the answers (or an error reply)."""

    run = None

    def __init__(self, s: dict[str, Any], refuse: int | None = None) -> None:
        self.s, self.refuse, self.sent = s, refuse, 0

    def get_node_ids(self) -> list[int]:
        return NODES

    def send_and_receive(self, messages: list[Message], timeout: float) -> list[Message]:
        out = []
        for i, msg in enumerate(messages):
            msg.metadata.__dict__["_message_id"] = f"q{i}"  # a delivered message has an id
            hospital = NODES.index(msg.metadata.dst_node_id)
            party = self.s["parties"][hospital + 1]
            self.sent += 1
            if hospital + 1 == self.refuse:
                out.append(Message(error=_error("party offline"), reply_to=msg))
                continue
            out.append(answer_decryption(msg, party, KEYS[hospital], keys=self.s["keys"],
                                         ledger=self.s["ledger"], participants=ADDRESSES))  # fmt: skip
        return out


def _error(reason: str) -> Any:
    from flwr.app import Error

    return Error(code=0, reason=reason)


def _arrays(seed: int) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    out = [[rng.normal(0, 0.1, s).astype(np.float32) for s in SHAPES] for _ in range(N)]
    out[4] = [a + 50.0 for a in out[4]]  # the Byzantine hospital
    return out


def _replies(s: dict[str, Any], arrays: list[list[np.ndarray]], r: int = 1) -> list[Message]:
    ctx = ts.context_from(s["keys"].public)
    out = []
    for i, a in enumerate(arrays):
        flat = np.frombuffer(encode_arrays(a), dtype="<f4")
        blob = ts.ckks_vector(ctx, flat.tolist()).serialize()
        rec = sign_ciphertext(blob, KEYS[i], s["task"], r, s["ledger"].domain, weight=1,
                              party=i + 1 if i < 3 else None)  # fmt: skip
        content = RecordDict({"metrics": MetricRecord({"num-examples": 1}), RECORD_KEY: rec})
        meta = Metadata(run_id=1, message_id=f"m{i}", src_node_id=NODES[i], dst_node_id=0,
                        reply_to_message_id=f"i{i}", group_id="1", created_at=time.time(),
                        ttl=60.0, message_type="train")  # fmt: skip
        out.append(Message(content, metadata=meta))
    return out


def _train(strategy: EngineFedAvg, grid: Any, replies: list[Message], r: int = 1) -> Any:
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = 1, 0, 1
    try:
        template = ArrayRecord([np.zeros(s, dtype=np.float32) for s in SHAPES])
        list(strategy.configure_train(r, template, ConfigRecord(), grid))
        return strategy.aggregate_train(r, replies)
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


def test_parties_decrypt_bucket_sums_and_the_median_comes_back_in_clear(setup) -> None:
    s = setup
    strategy = EngineFedAvg("median", 1, secure="ckks", rounds=s["rounds"])
    grid = InProcessGrid(s)
    arrays = _arrays(0)
    out, _ = _train(strategy, grid, _replies(s, arrays))
    assert out is not None and grid.sent == 3
    got = list(out.to_numpy_ndarrays())
    assert [g.shape for g in got] == SHAPES
    rec = s["ledger"].record(s["task"], 1)
    assert rec is not None and rec.n == N
    report = audit(s["ledger"], s["task"], 1, s["store"])
    assert report.ok, report.summary()
    # the same median in the clear, on the buckets the chain drew
    seal = s["ledger"].sealed(s["task"], 1)
    from bcfl_engine import buckets

    groups = buckets.assign(
        buckets.seed(seal.updates_root, s["ledger"].block_name(seal.block_number + 1)), N, 2
    )
    x = torch.tensor(
        np.stack([np.concatenate([a.reshape(-1) for a in c]) for c in arrays]), dtype=torch.float64
    )
    means = torch.stack([x[g].mean(0) for g in groups]).float()
    want = rules.get("median").reference(means)
    flat = torch.tensor(np.concatenate([g.reshape(-1) for g in got]))
    assert float((flat - want).abs().max()) < 1e-4
    assert float(flat.abs().max()) < 1.0  # the +50 hospital did not move it


def test_a_party_that_does_not_answer_leaves_the_round_uncommitted(setup, caplog) -> None:
    s = setup
    strategy = EngineFedAvg("median", 1, secure="ckks", rounds=s["rounds"])
    out, _ = _train(strategy, InProcessGrid(s, refuse=2), _replies(s, _arrays(1)))
    assert out is None and s["ledger"].record(s["task"], 1) is None
    assert any("party offline" in r.getMessage() for r in caplog.records)


def test_without_nodes_for_the_parties_nothing_is_sealed(setup, caplog) -> None:
    s = setup
    strategy = EngineFedAvg("median", 1, secure="ckks", rounds=s["rounds"])
    replies = _replies(s, _arrays(2))
    for m in replies[:3]:  # no reply says which node holds a key party
        del m.content.config_records[RECORD_KEY]["party"]
    out, _ = _train(strategy, InProcessGrid(s), replies)
    assert out is None and s["ledger"].sealed(s["task"], 1) is None
    assert any("no node answers" in r.getMessage() for r in caplog.records)
    with pytest.raises(InvalidArgument, match="rounds="):
        EngineFedAvg("median", 1, secure="ckks")
