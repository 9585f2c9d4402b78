"""A robust secure round: median over decrypted bucket means, buckets drawn from the chain.

Eight clients encrypt under a 3-party key; one is Byzantine (+100 in every coordinate). The
round seals its payloads, draws buckets of 2 from the seal and the next block, sums each bucket
homomorphically; the parties decrypt the bucket sums only, and the median of the bucket means
is committed. The tests check it against the median computed in the clear on the same buckets,
that the buckets come from the chain alone, that parties refuse other buckets, and that the
audit redoes every step and names the one an altered artifact breaks.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import numpy as np
import pytest
import torch

pytest.importorskip("web3")
pytest.importorskip("tenseal")

import tenseal as ts
from eth_account import Account

from bcfl_engine import buckets, protocol, rules
from bcfl_engine.chain import Ledger
from bcfl_engine.decryption import party_share
from bcfl_engine.errors import DecryptionRefused, PreconditionError
from bcfl_engine.he import multiparty as mp
from bcfl_engine.he.mpepoch import KeyEpoch, open_epoch, parties_of
from bcfl_engine.round import AggregationRound, audit, sign_payload
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

N, D = 8, 64
CLIENT_KEYS = [keccak256(f"bucket client {i}".encode()) for i in range(N)]
CLIENTS = [Account.from_key(k).address for k in CLIENT_KEYS]
PARTY_KEYS = {i: keccak256(f"bucket party {i}".encode()) for i in (1, 2, 3)}


@pytest.fixture(scope="module")
def key() -> dict[str, Any]:
    parties = [mp.KeyShare.generate(party=i) for i in (1, 2, 3)]
    public, crs = mp.local_setup(parties)
    accounts = {i: Account.from_key(k).address for i, k in PARTY_KEYS.items()}
    described = parties_of({p.party: p.commitment(crs) for p in parties}, accounts)
    return {"parties": {p.party: p for p in parties}, "keys": KeyEpoch(public, described, 3)}


def _xs(seed: int) -> np.ndarray:
    x = np.random.default_rng(seed).normal(0, 0.1, (N, D))
    x[5] += 100.0  # the Byzantine client
    return x


def _round(key: dict[str, Any], store: Any, seed: int = 0, **kw: Any) -> tuple[Any, Ledger]:
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=CLIENTS, model_spec=b"b")
    keys = open_epoch(ledger, task, key["keys"])
    ctx = ts.context_from(keys.public)
    rnd = AggregationRound(ledger, task, 1, store, participants=CLIENTS, secure="ckks", keys=keys,
                           rule="median", f=1, **kw)  # fmt: skip
    for i, x in enumerate(_xs(seed)):
        blob = ts.ckks_vector(ctx, x.tolist()).serialize()
        rnd.submit(sign_payload(CLIENT_KEYS[i], task, 1, blob, ledger.domain, weight=1 + i % 3))
    return rnd, ledger


def _answer_all(rnd: Any, key: dict[str, Any], ledger: Ledger) -> Any:
    req = rnd.decryption_request()
    for i in req.active:
        rnd.add_share(party_share(key["parties"][i], PARTY_KEYS[i], req, keys=rnd.keys,
                                  ledger=ledger, participants=CLIENTS))  # fmt: skip
    return req


def test_median_of_bucket_means_is_the_clear_median_and_audits(key, tmp_path) -> None:
    rnd, ledger = _round(key, tmp_path)
    req = _answer_all(rnd, key, ledger)
    assert req.bucket_size == 2 and len(req.buckets) == 4  # median, f=1: 4 buckets > 2f
    res = rnd.finalize()
    # the same median in the clear: bucket means of the plaintexts, weighted by client weight
    x, w = (
        torch.as_tensor(_xs(0)),
        torch.tensor([1.0 + i % 3 for i in range(N)], dtype=torch.float64),
    )
    means = torch.stack([(w[list(b)] @ x[list(b)]) / w[list(b)].sum() for b in req.buckets])
    want = rules.get("median").reference(means.float())
    got = torch.as_tensor(res.update)[:D]
    assert float((got - want[:D]).abs().max()) < 1e-4
    assert float(got.abs().max()) < 1.0  # the Byzantine client's +100 did not pass
    report = audit(ledger, rnd.task, 1, tmp_path)
    assert report.ok, report.summary()
    assert any("decrypted by the parties' stored shares" in c for c in report.checked)


def test_buckets_come_from_the_chain_alone(key, tmp_path) -> None:
    rnd, ledger = _round(key, tmp_path)
    req = rnd.decryption_request()
    seal = ledger.sealed(rnd.task, 1)
    assert seal is not None and seal.updates_root == req.updates_root and seal.n == N
    beacon = ledger.block_name(seal.block_number + 1)
    drawn = buckets.assign(buckets.seed(seal.updates_root, beacon), N, 2)
    assert [list(b) for b in req.buckets] == drawn
    # any other payload set has another root, hence other buckets
    other = buckets.assign(buckets.seed(keccak256(seal.updates_root), beacon), N, 2)
    assert other != drawn
    assert sorted(i for b in drawn for i in b) == list(range(N))


def test_a_party_refuses_buckets_the_chain_does_not_draw(key, tmp_path) -> None:
    rnd, ledger = _round(key, tmp_path)
    req = rnd.decryption_request()
    b = [list(g) for g in req.buckets]
    b[0][0], b[1][0] = b[1][0], b[0][0]  # two clients swapped between buckets
    swapped = dataclasses.replace(req, buckets=tuple(tuple(sorted(g)) for g in b))
    party = key["parties"][1]
    with pytest.raises(DecryptionRefused, match="not those the chain draws"):
        party_share(
            party, PARTY_KEYS[1], swapped, keys=rnd.keys, ledger=ledger, participants=CLIENTS
        )
    single = dataclasses.replace(req, buckets=tuple((i,) for i in range(N)), bucket_size=1)
    with pytest.raises(DecryptionRefused, match="fewer than 2"):
        party_share(
            party, PARTY_KEYS[1], single, keys=rnd.keys, ledger=ledger, participants=CLIENTS
        )


def test_a_bucket_size_the_rule_cannot_take_is_refused_before_the_seal(key, tmp_path) -> None:
    rnd, ledger = _round(key, tmp_path, bucket_size=3)  # 2 buckets: median needs > 2f = 2
    with pytest.raises(PreconditionError, match="median requires n > 2f"):
        rnd.decryption_request()
    assert ledger.sealed(rnd.task, 1) is None


def test_audit_names_an_altered_bucket_share(key, tmp_path) -> None:
    rnd, ledger = _round(key, tmp_path, seed=1)
    _answer_all(rnd, key, ledger)
    res = rnd.finalize()
    store = PayloadStore(tmp_path)
    meta = json.loads(store.get(res.meta_hash, hasher=protocol.meta_hash))
    assert meta["buckets"]["size"] == 2 and len(meta["keys"]["aggregates"]) == 4
    party, digests, _ = meta["keys"]["shares"][2]
    path = store.path(digests[3])
    data = bytearray(path.read_bytes())
    data[64] ^= 1
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    report = audit(ledger, rnd.task, 1, tmp_path)
    assert not report.ok and any(f"party {party}" in p for p in report.problems), report.summary()


def test_clipping_bucket_means_before_the_rule(key, tmp_path) -> None:
    """pre=[("clip", ...)] runs on the decrypted bucket means, as the audit reruns it."""
    rnd, ledger = _round(key, tmp_path, seed=2, pre=[("clip", {"max_norm": 0.5})])
    req = _answer_all(rnd, key, ledger)
    res = rnd.finalize()
    x, w = (
        torch.as_tensor(_xs(2)),
        torch.tensor([1.0 + i % 3 for i in range(N)], dtype=torch.float64),
    )
    means = torch.stack([(w[list(b)] @ x[list(b)]) / w[list(b)].sum() for b in req.buckets]).float()
    norms = means.norm(dim=1, keepdim=True)
    clipped = means * torch.clamp(0.5 / norms, max=1.0)
    want = rules.get("median").reference(clipped)
    assert float((torch.as_tensor(res.update)[:D] - want[:D]).abs().max()) < 1e-4
    assert audit(ledger, rnd.task, 1, tmp_path).ok
