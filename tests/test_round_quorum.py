"""Three AggregationRound replicas, each on its own store and key, attest the same rounds; t = 2.

Clients send every payload, with its salt, to every replica, which submit them in one order
(the leaves are in acceptance order: see replica_order); the engine being deterministic, the two honest
replicas compute the same tuple and make each round final; the third computes another (here a
different rule: what a lying or misconfigured aggregator commits) and is named as evidence,
whether it votes before the quorum or after. The audit passes on an honest store and names who
attested what.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import make_updates

from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import AnvilNode, Ledger, replica_order
from bcfl_engine.chain.records import tuple_id

N, D = 5, 11
KEYS = [keccak256(b"quorum hospital %d" % i) for i in range(N)]
PARTICIPANTS = [Account.from_key(k).address for k in KEYS]


@pytest.fixture(scope="module", params=["embedded", "anvil"])
def replicas(request: pytest.FixtureRequest) -> Iterator[list[Ledger]]:
    """The owner, then three aggregators' ledgers on one registry."""
    if request.param == "embedded":
        base = Ledger.embedded()
        yield [base] + [base.as_sender(k) for k in base.dev_keys[1:4]]
        return
    with AnvilNode() as node:
        keys = [node.fund_key(b"q%d" % i) for i in range(4)]
        owner = Ledger.deploy(node.w3, keys[0])
        yield [owner] + [owner.as_sender(k) for k in keys[1:]]


def test_two_honest_replicas_finalize_every_round_and_the_third_is_evidence(
    replicas: list[Ledger], tmp_path: Path
) -> None:
    owner, *aggs = replicas
    dishonest = aggs[2]
    task = owner.create_task(
        aggregators=[a.sender for a in aggs],
        threshold=2,
        participants=PARTICIPANTS,
        model_spec=b"q",
    )
    # The dishonest replica votes first (round 1: named at finality), last (round 2: named at
    # once), in between (round 3).
    orders = {1: [2, 0, 1], 2: [0, 1, 2], 3: [0, 2, 1]}
    for r, order in orders.items():
        x = make_updates(N, D, seed=r)
        rounds = [
            AggregationRound(
                a,
                task,
                r,
                tmp_path / f"store{i}",
                participants=PARTICIPANTS,
                dim=D,
                rule="median" if a is dishonest else "mean",
            )
            for i, a in enumerate(aggs)
        ]
        for i in range(N):  # a client sends the same signed payload to every replica
            p = sign_payload(KEYS[i], task, r, encode_update(x[i]), owner.domain, weight=i + 1)
            # Its own salt: a replica draws one for a payload that brings none, and the leaves
            # (so the roots) of the replicas would differ.
            p = dataclasses.replace(p, salt=keccak256(b"salt %d %d" % (r, i)))
            for rnd in rounds:
                rnd.submit(p)
        results = {}
        for i in order:
            results[i] = rounds[i].finalize()
        honest = results[0]
        assert (honest.root, honest.result_digest, honest.meta_hash) == (
            results[1].root,
            results[1].result_digest,
            results[1].meta_hash,
        )
        assert results[2].root == honest.root and results[2].result_digest != honest.result_digest
        final = tuple_id(honest.root, bytes(32), honest.result_digest, honest.meta_hash, N)
        status = owner.round_status(task, r)
        assert status.final == final, f"round {r}"
        rec = owner.record(task, r)
        assert rec is not None and rec.result_digest == honest.result_digest
        assert status.attested(final) == [aggs[i].sender for i in order if i != 2]
        assert [(c.aggregator, c.final) for c in status.conflicts] == [(dishonest.sender, final)]
        assert status.attestations[dishonest.sender] != final
        report = audit(owner, task, r, tmp_path / "store0")
        assert report.ok, report.summary()
        text = report.summary()
        assert f"quorum 2 of 3: final tuple 0x{final.hex()[:16]}" in text
        assert f"{dishonest.sender} attested" in text and "conflict evidence" in text
        bad = audit(owner, task, r, tmp_path / "store2")  # the dishonest store fails its audit
        assert not bad.ok
    assert owner.latest_round(task) == 3


def test_replicas_agree_whatever_the_arrival_order_when_they_submit_in_replica_order(
    replicas: list[Ledger], tmp_path: Path
) -> None:
    """t = 3 of 3. Round 1: the replicas get the payloads in three orders and submit them in
    replica_order: one tuple, final, no conflict, the audit passes. Round 2: they submit in
    their arrival orders: three roots, three tuples, not final (why the order is a rule for
    replicas, not a detail)."""
    owner, *aggs = replicas
    task = owner.create_task(
        aggregators=[a.sender for a in aggs], threshold=3, participants=PARTICIPANTS,
        model_spec=b"order",
    )  # fmt: skip
    # Three groupings of the 5 leaves into pairs (sorted pairs: a swap within a pair is no change).
    arrivals = [[3, 0, 4, 1, 2], [1, 2, 3, 4, 0], [0, 4, 1, 3, 2]]
    results = []
    for r, canonical in ((1, True), (2, False)):
        x = make_updates(N, D, seed=10 + r)
        payloads = [
            dataclasses.replace(
                sign_payload(KEYS[i], task, r, encode_update(x[i]), owner.domain, weight=i + 1),
                salt=keccak256(b"order salt %d %d" % (r, i)),
            )
            for i in range(N)
        ]
        results = []
        for a, arrival in zip(aggs, arrivals, strict=True):
            rnd = AggregationRound(
                a, task, r, tmp_path / f"order{a.sender}", participants=PARTICIPANTS, dim=D,
                rule="mean", backend="torch",
            )  # fmt: skip
            got = [payloads[i] for i in arrival]
            if canonical:
                accepted = rnd.submit_many(replica_order(got))
                assert all(isinstance(rec, dict) for rec in accepted), accepted
            else:
                for p in got:
                    rnd.submit(p)
            results.append(rnd.finalize())
        status = owner.round_status(task, r)
        if canonical:
            assert len({(x.root, x.result_digest, x.meta_hash) for x in results}) == 1
            assert status.is_final and status.conflicts == []
            assert status.attested(status.final) == [a.sender for a in aggs]
            report = audit(owner, task, r, tmp_path / f"order{aggs[0].sender}")
            assert report.ok, report.summary()
        else:
            assert len({x.root for x in results}) == 3
            assert not status.is_final and len(set(status.attestations.values())) == 3


def test_replica_order_is_by_address_bytes_whatever_the_case() -> None:
    from bcfl_engine.errors import InvalidArgument

    payloads = [_Sent(a) for a in PARTICIPANTS]
    mixed = [_Sent(p.client.lower()) if i % 2 else p for i, p in enumerate(payloads)]
    want = sorted(PARTICIPANTS, key=lambda a: bytes.fromhex(a[2:]))
    assert [p.client.lower() for p in replica_order(mixed)] == [a.lower() for a in want]
    assert [p.client for p in replica_order(reversed(payloads))] == want
    with pytest.raises(InvalidArgument):
        replica_order([_Sent("0x12")])


@dataclasses.dataclass(frozen=True)
class _Sent:
    client: str
