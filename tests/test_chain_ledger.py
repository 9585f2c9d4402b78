"""The round registry on both chains: the embedded one (eth-tester + py-evm) and anvil.

anvil comes from the npm package ``@foundry-rs/anvil`` (``npm ci --prefix contracts``); the
fixture starts it on 127.0.0.1 on a free port and stops it after this module. Without it the
anvil cases fail rather than skip, so CI cannot pass while testing one chain only.
"""

from __future__ import annotations

import functools
import random
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from bcfl_engine.protocol import payload_digest

pytest.importorskip("web3", reason="the chain extra provides web3 and eth-tester")

from eth_account import Account

from bcfl_engine.chain import (
    Ledger,
    MerkleTree,
    contribution_leaf,
    leaf_hash,
    participant_leaf,
    round_root,
    sign_payload,
)
from bcfl_engine.chain import errors as ce
from bcfl_engine.chain.devnode import AnvilNode
from bcfl_engine.errors import ChainError, InvalidArgument, MissingDependency
from bcfl_engine.updates import keccak256

ZERO = bytes(32)
# Targets of the issue: a commit costs the same whatever the number of leaves, within the
# calldata of the differing bytes (n = 10 vs 100000 differ in 2 bytes: 24 gas; a random root
# has a zero byte now and then: 12 gas each), hence the 200-gas band.
COMMIT_GAS_MAX, INCLUSION_GAS_MAX, SAME_GAS_BAND = 60_000, 45_000, 200


@dataclass
class Chain:
    name: str
    w3: Any
    keys: list[bytes]
    url: str | None = None


@pytest.fixture(scope="module", params=["embedded", "anvil"])
def chain(request: pytest.FixtureRequest) -> Iterator[Chain]:
    if request.param == "embedded":
        base = Ledger.embedded()
        yield Chain("embedded", base.w3, base.dev_keys)
        return
    # Fails (does not skip) when anvil is missing: CI must test both chains.
    with AnvilNode() as node:
        yield Chain("anvil", node.w3, [node.fund_key(b"%d" % i) for i in range(10)], node.url)


@dataclass
class Actors:
    owner: Ledger
    agg: Ledger
    stranger: Ledger
    participants: list[str]
    keys: list[bytes]
    task: int


@pytest.fixture
def actors(chain: Chain) -> Actors:
    """A fresh registry: owner = key 0, aggregator = key 1, participants = keys 2-6."""
    owner = Ledger.deploy(chain.w3, chain.keys[0])
    owner.dev_keys = chain.keys
    participants = [Account.from_key(k).address for k in chain.keys[2:7]]
    agg = owner.as_sender(chain.keys[1])
    task = owner.create_task(aggregator=agg.sender, participants=participants, model_spec=b"cnn-v1")
    return Actors(owner, agg, owner.as_sender(chain.keys[7]), participants, chain.keys, task)


def _rand32(rng: random.Random) -> bytes:
    return rng.randbytes(32)


@functools.cache
def _tree(n: int, seed: int = 0) -> MerkleTree:
    """Real update leaves up to 1000; beyond, random 32-byte leaves (the contract cannot tell,
    and hashing 100,000 leaf encodings would double this module's time)."""
    rng = random.Random(seed * 1_000_003 + n)
    if n > 1000:
        return MerkleTree.from_leaves([_rand32(rng) for _ in range(n)])
    leaves = [
        leaf_hash(1, rng.randbytes(20), _rand32(rng), rng.randrange(1, 10**6), _rand32(rng))
        for _ in range(n)
    ]
    return MerkleTree.from_leaves(leaves)


def _commit(
    a: Actors, round: int, tree: MerkleTree, credits: MerkleTree | None = None, **kw: Any
) -> Any:
    args = {
        "result_digest": keccak256(b"result %d" % round),
        "meta": {"rule": "mean", "f": 0},
        "n": len(tree),
    }
    return a.agg.commit_round(
        a.task,
        round,
        updates_root=tree.root,
        contributions_root=None if credits is None else credits.root,
        **{**args, **kw},
    )


def test_commit_gas_is_constant_and_under_target(actors: Actors) -> None:
    first = _commit(actors, 1, _tree(5))
    assert 0 < first.gas_used <= COMMIT_GAS_MAX
    gas = {
        n: _commit(actors, r, _tree(n)).gas_used for r, n in enumerate([10, 1000, 100_000], start=2)
    }
    assert max(gas.values()) <= COMMIT_GAS_MAX, gas
    assert max(gas.values()) - min(gas.values()) <= SAME_GAS_BAND, gas


def test_inclusion_check_at_16384_leaves_is_under_target(actors: Actors) -> None:
    tree = _tree(16_384)
    _commit(actors, 1, tree)
    i = 12_345
    assert len(tree.proof(i)) == 14
    assert actors.stranger.verify_inclusion(actors.task, 1, tree.leaves[i], tree.proof(i))
    # Sent as a transaction, the check costs what a contract calling it would pay at most.
    receipt = actors.stranger.transact(
        "verifyInclusion", actors.task, 1, tree.leaves[i], [*tree.proof(i), ZERO]
    )
    assert receipt.gas_used <= INCLUSION_GAS_MAX, receipt


def test_random_trees_are_verified_by_the_contract(actors: Actors) -> None:
    rng = random.Random(2024)
    sizes = [1, 2, 3, 6, 17, 64, 100, 257, 613, 1000]
    for r, n in enumerate(sizes, start=1):
        tree = _tree(n, seed=r)
        _commit(actors, r, tree)
        v = functools.partial(actors.stranger.verify_inclusion, actors.task, r)
        for i in {0, n - 1, rng.randrange(n)}:
            proof = tree.proof(i)
            assert v(tree.leaves[i], proof), f"n={n} leaf {i}"
            assert not v(keccak256(tree.leaves[i]), proof), f"n={n}: an altered leaf passed"
            if proof:
                k = rng.randrange(len(proof))
                bad = [*proof[:k], keccak256(proof[k]), *proof[k + 1 :]]
                assert not v(tree.leaves[i], bad), f"n={n}: an altered proof passed"
                assert not v(tree.leaves[i], proof[:-1]), f"n={n}: a truncated proof passed"
        if n > 1:
            assert not v(tree.leaves[0], []), f"n={n}: an empty proof passed"


def test_only_the_aggregator_commits_and_only_the_owner_hands_the_role_over(actors: Actors) -> None:
    tree = _tree(4)
    for who in (actors.owner, actors.stranger):
        with pytest.raises(ce.NotAggregator, match="not the aggregator of task"):
            who.commit_round(
                actors.task, 1, updates_root=tree.root, result_digest=ZERO, meta="m", n=4
            )
    with pytest.raises(ce.NotOwner, match="not the owner of task"):
        actors.stranger.set_aggregator(actors.task, actors.stranger.sender)
    with pytest.raises(ce.ZeroAddress):
        actors.owner.set_aggregator(actors.task, "0x" + "00" * 20)
    actors.owner.set_aggregator(actors.task, actors.stranger.sender)
    assert actors.owner.task_info(actors.task).aggregator == actors.stranger.sender
    with pytest.raises(ce.NotAggregator):
        _commit(actors, 1, tree)  # the former aggregator
    assert actors.stranger.commit_round(
        actors.task, 1, updates_root=tree.root, result_digest=ZERO, meta="m", n=4
    )
    with pytest.raises(ce.UnknownTask, match="task 99 does not exist"):
        actors.agg.commit_round(99, 1, updates_root=tree.root, result_digest=ZERO, meta="m", n=4)
    with pytest.raises(ce.ZeroAddress):
        actors.owner.create_task(
            aggregator="0x" + "00" * 20, participants=actors.participants, model_spec=b""
        )


def test_rounds_are_append_only(actors: Actors) -> None:
    tree, t = _tree(7), actors.task
    with pytest.raises(ce.RoundOutOfOrder, match="round 0 of task"):
        _commit(actors, 0, tree)
    with pytest.raises(ce.RoundOutOfOrder, match="round 2 of task"):
        _commit(actors, 2, tree)
    with pytest.raises(ce.EmptyRound, match="expected n >= 1"):
        _commit(actors, 1, tree, n=0)
    assert actors.agg.latest_round(t) == 0
    first = _commit(actors, 1, tree)
    assert not first.noop and first.gas_used > 0
    again = _commit(actors, 1, tree)  # same data: a no-op, no transaction
    assert again.noop and again.gas_used == 0 and again.tx_hash is None
    with pytest.raises(ce.RoundConflict, match="result_digest: chain 0x"):
        _commit(actors, 1, tree, result_digest=keccak256(b"other"))
    with pytest.raises(ce.RoundConflict, match="n: chain 7 vs given 8"):
        _commit(actors, 1, tree, n=8)
    with pytest.raises(ce.RoundExists, match="already committed"):  # the contract itself refuses
        actors.agg.transact("commitRound", t, 1, tree.root, ZERO, ZERO, ZERO, 7)
    for r in range(2, 6):
        _commit(actors, r, _tree(3, seed=r))
    assert actors.agg.latest_round(t) == 5
    hist = actors.stranger.history(t)
    assert [h.round for h in hist] == [1, 2, 3, 4, 5]
    assert (
        hist[0].updates_root == tree.root
        and hist[0].n == 7
        and hist[0].result_digest == keccak256(b"result 1")
    )
    assert all(h.root == actors.stranger.round_root(t, h.round) for h in hist)
    assert actors.stranger.round_root(t, 6) is None


def test_wrong_and_empty_proofs_and_unknown_rounds(actors: Actors) -> None:
    one = _tree(1)
    _commit(actors, 1, one)
    v = actors.stranger.verify_inclusion
    assert v(actors.task, 1, one.leaves[0], [])  # a one-leaf tree: the empty proof is right
    assert not v(actors.task, 1, _tree(2).leaves[0], [])
    with pytest.raises(ce.RoundNotCommitted, match="round 2 of task"):
        v(actors.task, 2, one.leaves[0], [])
    with pytest.raises(ce.RoundNotCommitted):
        v(actors.task + 1, 1, one.leaves[0], [])
    with pytest.raises(InvalidArgument, match="leaf must be 32 bytes"):
        v(actors.task, 1, b"short", [])


def test_claims_credit_once_with_a_proof(actors: Actors) -> None:
    p, t = actors.participants, actors.task
    credit = {p[0]: 30, p[1]: 10, p[2]: 0, p[3]: 7}
    credits = MerkleTree.from_leaves([contribution_leaf(1, a, c) for a, c in credit.items()])
    updates = _tree(4)
    _commit(actors, 1, updates, credits)
    assert actors.stranger.round_root(t, 1) == round_root(updates.root, credits.root)
    # The participant itself, or anyone on its behalf: the credit goes to the account.
    actors.owner.as_sender(actors.keys[2]).claim(
        t, 1, account=p[0], credit=30, proof=credits.proof(0)
    )
    actors.stranger.claim(t, 1, account=p[1], credit=10, proof=credits.proof(1))
    assert actors.stranger.credits(t, p[0]) == 30 and actors.stranger.credits(t, p[1]) == 10
    with pytest.raises(ce.AlreadyClaimed, match="already claimed its credit of round 1"):
        actors.stranger.claim(t, 1, account=p[0], credit=30, proof=credits.proof(0))
    with pytest.raises(ce.InvalidProof, match="does not lead to the stored root"):
        actors.stranger.claim(t, 1, account=p[3], credit=8, proof=credits.proof(3))  # inflated
    with pytest.raises(ce.InvalidProof):
        actors.stranger.claim(
            t, 1, account=p[4], credit=7, proof=credits.proof(3)
        )  # someone else's
    with pytest.raises(ce.InvalidProof):
        actors.stranger.claim(t, 1, account=p[3], credit=7, proof=[])
    # An update leaf is not a credit: the contract derives the credit leaf itself.
    with pytest.raises(ce.RoundNotCommitted):
        actors.stranger.claim(t, 2, account=p[3], credit=7, proof=credits.proof(3))
    # The tally adds up over rounds; a round without contributions has nothing to claim.
    credits2 = MerkleTree.from_leaves(
        [contribution_leaf(2, p[0], 5), contribution_leaf(2, p[1], 1)]
    )
    _commit(actors, 2, _tree(2), credits2)
    actors.stranger.claim(t, 2, account=p[0], credit=5, proof=credits2.proof(0))
    assert actors.stranger.credits(t, p[0]) == 35
    _commit(actors, 3, _tree(2))
    with pytest.raises(ce.InvalidProof):
        actors.stranger.claim(t, 3, account=p[0], credit=5, proof=credits2.proof(0))
    # Inclusion of updates still works next to a contributions subtree.
    assert actors.stranger.verify_inclusion(t, 1, updates.leaves[2], updates.proof(2))


def test_participants_root_and_payload_checks(actors: Actors) -> None:
    p, t = actors.participants, actors.task
    tree = MerkleTree.from_leaves([participant_leaf(a) for a in p])
    info = actors.stranger.task_info(t)
    assert info.participants_root == tree.root and info.model_spec_hash == keccak256(b"cnn-v1")
    assert info.owner == actors.owner.sender and info.aggregator == actors.agg.sender
    assert actors.stranger.is_participant(t, p[3], tree.proof(3))
    assert not actors.stranger.is_participant(t, actors.stranger.sender, tree.proof(3))
    payload = sign_payload(
        actors.keys[3], task=t, round=1, digest=payload_digest(b"u"), domain=actors.agg.domain
    )
    assert (
        actors.agg.verify_payload(payload, task=t, round=1, participants=p, data=b"u")
        == p[1].lower()
    )
    with pytest.raises(ChainError, match="do not match the root registered"):
        actors.agg.verify_payload(payload, task=t, round=1, participants=p[:-1])
    with pytest.raises(ce.ReplayedPayload):
        actors.agg.verify_payload(payload, task=t, round=2, participants=p)
    with pytest.raises(ce.UnknownTask):
        actors.stranger.task_info(t + 5)


def test_an_existing_registry_is_read_back_and_a_wrong_address_refused(
    chain: Chain, actors: Actors
) -> None:
    _commit(actors, 1, _tree(3))
    addr = actors.owner.address

    def open_(**kw: Any) -> Ledger:  # by URL on a node; the embedded chain has no URL
        return (
            Ledger.connect(chain.url, address=kw.pop("address", addr), **kw)
            if chain.url
            else Ledger.at(chain.w3, kw.pop("address", addr), kw.get("key"))
        )

    reader = open_()
    assert [h.round for h in reader.history(actors.task)] == [1]
    assert reader.verify_inclusion(actors.task, 1, _tree(3).leaves[1], _tree(3).proof(1))
    with pytest.raises(ChainError, match="read-only"):
        reader.commit_round(
            actors.task, 2, updates_root=_tree(3).root, result_digest=ZERO, meta="", n=1
        )
    with pytest.raises(ChainError, match="no RoundRegistry at"):
        open_(address=actors.owner.sender)
    writer = open_(key=actors.keys[1])
    receipt = writer.commit_round(
        actors.task, 2, updates_root=_tree(3).root, result_digest=ZERO, meta="", n=3
    )
    assert receipt.gas_used > 0 and actors.stranger.latest_round(actors.task) == 2


def test_missing_chain_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "eth_tester", None)
    with pytest.raises(MissingDependency, match=r"bcfl_engine\[chain\]"):
        Ledger.embedded()


def test_key_epochs_are_owner_only_append_only_and_read_back(actors: Actors) -> None:
    from bcfl_engine.chain import key_party_leaf

    task = actors.task
    assert actors.owner.key_epoch(task) is None and actors.owner.key_epoch_count(task) == 0
    parties = MerkleTree.from_leaves(
        [key_party_leaf(i, actors.participants[i - 1], keccak256(b"c%d" % i), 2) for i in (1, 2, 3)]
    )
    for who in (actors.agg, actors.stranger):
        with pytest.raises(ce.NotOwner, match="not the owner of task"):
            who.set_key_epoch(task, key_hash=keccak256(b"k"), parties_root=parties.root)
    with pytest.raises(ce.EmptyKeyEpoch, match="non-zero key hash"):
        actors.owner.set_key_epoch(task, key_hash=ZERO, parties_root=parties.root)
    with pytest.raises(ce.EmptyKeyEpoch):
        actors.owner.set_key_epoch(task, key_hash=keccak256(b"k"), parties_root=ZERO)
    with pytest.raises(ce.UnknownTask):
        actors.owner.set_key_epoch(task + 1, key_hash=keccak256(b"k"), parties_root=parties.root)
    assert actors.owner.key_epoch_count(task) == 0  # nothing was written by the refusals
    assert (
        actors.owner.set_key_epoch(task, key_hash=keccak256(b"k1"), parties_root=parties.root) == 1
    )
    assert (
        actors.owner.set_key_epoch(task, key_hash=keccak256(b"k2"), parties_root=parties.root) == 2
    )
    first, latest = actors.stranger.key_epoch(task, 1), actors.stranger.key_epoch(task)
    assert first is not None and first.key_hash == keccak256(b"k1") and first.epoch == 1
    assert latest is not None and latest.key_hash == keccak256(b"k2") and latest.epoch == 2
    assert latest.parties_root == parties.root
    assert actors.stranger.key_epoch(task, 3) is None and actors.stranger.key_epoch(task, 0) is None
    with pytest.raises(ce.UnknownKeyEpoch, match="has no key epoch 3"):
        actors.stranger.call("keyEpoch", task, 3)


def test_a_round_is_sealed_once_by_its_aggregator_and_the_next_block_is_its_beacon(
    actors: Actors,
) -> None:
    """sealRound on both chains: the aggregator only, rounds in order, once (a second seal with
    the same root and n is the same seal); the block after it is mined on demand."""
    tree = _tree(4)
    with pytest.raises(ce.NotAggregator):
        actors.owner.seal_round(actors.task, 1, updates_root=tree.root, n=4)
    with pytest.raises(ce.RoundOutOfOrder):
        actors.agg.seal_round(actors.task, 2, updates_root=tree.root, n=4)
    with pytest.raises(ce.EmptyRound):
        actors.agg.seal_round(actors.task, 1, updates_root=ZERO, n=4)
    assert actors.agg.sealed(actors.task, 1) is None
    seal = actors.agg.seal_round(actors.task, 1, updates_root=tree.root, n=4)
    assert (seal.updates_root, seal.n) == (tree.root, 4)
    assert int(actors.agg.call("sealedAt", actors.task, 1)) == seal.block_number
    assert actors.agg.seal_round(actors.task, 1, updates_root=tree.root, n=4) == seal
    with pytest.raises(ce.AlreadySealed):
        actors.agg.seal_round(actors.task, 1, updates_root=_tree(5).root, n=5)
    beacon = actors.agg.beacon(seal)
    assert beacon == bytes(actors.agg.w3.eth.get_block(seal.block_number + 1)["hash"])
    assert actors.stranger.beacon(seal) == beacon  # anyone reads the same block back
    _commit(actors, 1, tree)  # a sealed round commits as any other
    with pytest.raises(ce.RoundExists):  # the contract's own check, under the Python one
        actors.agg.transact("sealRound", actors.task, 1, _tree(6).root, 6)
