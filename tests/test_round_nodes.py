"""bcfl_engine.round_nodes: one round over 2 and 3 ingest nodes (gloo processes on 127.0.0.1).

Each node is a process with its own store and its own connection to one anvil chain (the chain
outlives the nodes, as in production); only node 0 holds the aggregator's key. The committed
round is checked against a single AggregationRound over the same payloads in the canonical order
(node 0's, then node 1's, ...), on the embedded chain: same root, same result bits. The audit
recomputes it from the union of the stores, and names what differs when a store is altered,
left out or given alone. A node killed mid-round: the others raise PeerFailure within the
group's timeout, every store keeps its payloads, and a rerun commits the round.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import free_port, make_updates, run_ranks
from store_tools import flip_payload_byte

from bcfl_engine.cli import main
from bcfl_engine.protocol import payload_digest
from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.round_log import RoundLog
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 10, 1001  # n and d not multiples of 2 or 3 nodes
KEYS = [keccak256(f"nodes hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
SPLITS = {2: [[3, 0, 7, 1, 9], [2, 8, 4, 6, 5]], 3: [[4, 1], [0, 9, 2, 7], [3, 8, 6, 5]]}
"""Which clients each node receives, in arrival order (not the clients' order)."""
CASES = {2: ("mean", 0), 3: ("krum", 2)}  # (rule, f) per number of nodes: weighted and not
TIMEOUT_S = 4  # the process group's timeout in the failure test, seconds


@pytest.fixture(scope="module")
def anvil(anvil_url):
    return Ledger.connect(anvil_url, key=ANVIL_KEY)


def signed(ledger, task, round, x):
    return [
        dataclasses.replace(
            sign_payload(KEYS[i], task, round, encode_update(x[i]), ledger.domain, weight=i + 1),
            salt=keccak256(b"nodes salt %d" % i),
        )
        for i in range(N)
    ]


def _node(rank: int, world: int, port: int, job: dict) -> None:
    """One ingest node: accept its clients' payloads, then finalize with the others."""
    from bcfl_engine.errors import PeerFailure
    from bcfl_engine.round_nodes import finalize_nodes

    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=job["timeout"]),
    )
    # Node 0 commits; the others read the chain only.
    key = ANVIL_KEY if rank == 0 else None
    ledger = Ledger.connect(job["url"], key=key, address=job["address"])
    out: dict = {}
    for round, payloads in job["rounds"]:
        rnd = AggregationRound(
            ledger,
            job["task"],
            round,
            Path(job["stores"][rank]),
            participants=ADDRESSES,
            dim=D,
            rule=job["rule"],
            f=job["f"],
            pre=job.get("pre", []),
            backend=job.get("backend", "torch"),
        )
        mine = [payloads[i] for i in job["splits"][round][rank]]
        if not rnd.committed:  # (a committed round refuses payloads, retries too)
            assert all(isinstance(r, dict) for r in rnd.submit_many(mine))
        if job["die"] == "aggregate" and rank == world - 1:
            import bcfl_engine.distributed

            def die(*args, **kwargs):
                os._exit(3)  # in the middle of the aggregate: metadata exchanged, rows not

            bcfl_engine.distributed.to_columns = die  # type: ignore[attr-defined]
        if job["die"] == "commit" and rank == 0:
            attest = ledger.attest_round

            def commit_then_die(*args, _attest=attest, **kwargs):
                _attest(*args, **kwargs)
                os._exit(3)  # committed; the others have not heard of it

            ledger.attest_round = commit_then_die  # type: ignore[method-assign]
        start = time.monotonic()
        try:
            res = finalize_nodes(rnd)
            out[round] = (res.root, res.result_digest, res.update.clone(), res.clients)
            if not job["die"]:  # once committed, a rerun recomputes it and commits nothing
                again = AggregationRound(
                    ledger, job["task"], round, Path(job["stores"][rank]), participants=ADDRESSES,
                    dim=D, rule=job["rule"], f=job["f"], pre=job.get("pre", []),
                    backend=job.get("backend", "torch"),
                )  # fmt: skip
                res2 = finalize_nodes(again)
                out[f"{round}-again"] = (res2.root, res2.result_digest, res2.receipt.noop)
        except PeerFailure as exc:
            out[round] = f"PeerFailure after {time.monotonic() - start:.1f}s: {exc}"
        except Exception as exc:
            out[round] = f"{type(exc).__name__}: {exc}"
    torch.save(out, os.path.join(job["out"], f"node{rank}.pt"))
    os._exit(0)  # a broken group has no orderly shutdown to wait for


def run_nodes(world: int, job: dict) -> tuple[list[int | None], list[dict]]:
    codes = run_ranks(_node, world, (job,), timeout_s=240)
    outs = [
        torch.load(Path(job["out"], f"node{r}.pt"))
        if Path(job["out"], f"node{r}.pt").exists()
        else {}
        for r in range(world)
    ]
    return codes, outs


def single_round(x, rule, f, order, round=1, pre=()):
    """The same payloads accepted by one AggregationRound in ``order``, on the embedded chain."""
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"n")
    ps = signed(ledger, task, round, x)
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        rnd = AggregationRound(
            ledger, task, round, tmp, participants=ADDRESSES, dim=D, rule=rule, f=f, pre=pre,
            backend="torch",
        )  # fmt: skip
        assert all(isinstance(r, dict) for r in rnd.submit_many([ps[i] for i in order]))
        res = rnd.finalize()
    return res


@pytest.fixture(scope="module", params=[2, 3], ids=["nodes2", "nodes3"])
def nodes_round(request, anvil, tmp_path_factory):
    """Round 1 over ``world`` nodes, committed; round 2, where node 1 also accepts client 0
    (whose payload node 0 accepted): a duplicate, refused on every node."""
    world = request.param
    rule, f = CASES[world]
    tmp = tmp_path_factory.mktemp(f"nodes{world}")
    task = anvil.create_task(aggregator=anvil.sender, participants=ADDRESSES, model_spec=b"n")
    x = make_updates(N, D, seed=40 + world)
    dup = [list(s) for s in SPLITS[world]]
    dup[1].append(dup[0][0])
    job = dict(
        url=anvil.w3.provider.endpoint_uri, address=anvil.address, task=task, rule=rule, f=f,
        stores=[str(tmp / f"store{r}") for r in range(world)], out=str(tmp), die=None,
        timeout=60, splits={1: SPLITS[world], 2: dup},
        rounds=[(1, signed(anvil, task, 1, x)), (2, signed(anvil, task, 2, x.flip(0)))],
    )  # fmt: skip
    codes, outs = run_nodes(world, job)
    assert codes == [0] * world, (codes, outs)
    return dict(job, world=world, x=x, outs=outs)


def canonical(world, splits=None):
    return [i for node in (splits or SPLITS[world]) for i in node]


def test_every_node_commits_what_one_round_commits(nodes_round, anvil):
    world, outs = nodes_round["world"], nodes_round["outs"]
    assert all(isinstance(o[1], tuple) for o in outs), [o[1] for o in outs]
    root, digest, update, clients = outs[0][1]
    for o in outs[1:]:  # every node ends with the same result, bit for bit
        assert o[1][:2] == (root, digest)
        assert torch.equal(o[1][2], update)
        assert o[1][3] == clients
    one = single_round(nodes_round["x"], nodes_round["rule"], nodes_round["f"], canonical(world))
    assert one.root == root
    assert one.result_digest == digest
    assert torch.equal(one.update, update)
    assert clients == [ADDRESSES[i].lower() for i in canonical(world)]
    commit = anvil.record(nodes_round["task"], 1)
    assert (commit.updates_root, commit.result_digest, commit.n) == (root, digest, N)
    for o in outs:  # a rerun of a committed round recomputes it, sends nothing
        assert o["1-again"] == (root, digest, True)


def test_a_client_accepted_by_two_nodes_is_refused_on_every_node(nodes_round, anvil):
    client = ADDRESSES[SPLITS[nodes_round["world"]][0][0]].lower()
    for o in nodes_round["outs"]:
        assert o[2].startswith("DuplicateClient"), o[2]
        assert f"client {client} was accepted by nodes [0, 1]" in o[2]
    assert anvil.record(nodes_round["task"], 2) is None


def _copies(nodes_round, tmp_path):
    out = []
    for s in nodes_round["stores"]:
        shutil.copytree(s, tmp_path / Path(s).name)
        out.append(str(tmp_path / Path(s).name))
    return out


def test_audit_from_the_union_of_the_stores(nodes_round, anvil, tmp_path):
    task, stores = nodes_round["task"], nodes_round["stores"]
    report = audit(anvil, task, 1, stores[::-1])  # any order
    assert report.ok, report.summary()
    assert any("result recomputed" in c for c in report.checked)
    alone = audit(anvil, task, 1, stores[0])
    assert not alone.ok
    assert any("audit it from every node's store" in p for p in alone.problems)
    left_out = audit(anvil, task, 1, stores[:-1])
    assert any(f"node(s) [{len(stores) - 1}] of {len(stores)}" in p for p in left_out.problems)
    assert any("number of updates differs" in p for p in left_out.problems)


def test_audit_names_the_node_of_an_altered_payload(nodes_round, anvil, tmp_path):
    task, world = nodes_round["task"], nodes_round["world"]
    stores = _copies(nodes_round, tmp_path)
    victim = ADDRESSES[SPLITS[world][1][1]].lower()
    store = PayloadStore(stores[1])
    key = next(p.name for p in (Path(stores[1]) / "rounds").iterdir())
    [rec] = [r for r in store.accepted(key, 1) if r["client"] == victim]
    flip_payload_byte(store, key, 1, rec["digest"], at=17)
    report = audit(anvil, task, 1, stores)
    assert not report.ok
    seq = len(SPLITS[world][0]) + 1  # its place in the canonical order
    assert any(
        f"client {victim} (seq {seq}, node 1, store {stores[1]}): stored payload altered" in p
        for p in report.problems
    ), report.problems
    # The CLI reads the same union: exit 0 on the intact stores, 1 on the altered ones.
    url = anvil.w3.provider.endpoint_uri
    args = ["audit", "--chain", url, "--task", str(task), "--round", "1"]
    assert main([*args, *(a for s in nodes_round["stores"] for a in ("--store", s))]) == 0
    assert main([*args, *(a for s in stores for a in ("--store", s))]) == 1


def test_audit_names_stores_that_do_not_fit_the_round(nodes_round, anvil, tmp_path):
    task = nodes_round["task"]
    stores = _copies(nodes_round, tmp_path)
    twice = audit(anvil, task, 1, [*stores, nodes_round["stores"][0]])
    assert any(
        f"stores {stores[0]} and {nodes_round['stores'][0]} both say they are node 0" in p
        for p in twice.problems
    ), twice.problems
    [record] = list(Path(stores[1]).rglob("round.json"))
    record.unlink()
    lost = audit(anvil, task, 1, stores)
    assert any(f"store {stores[1]} holds no round record" in p for p in lost.problems)
    assert any("node(s) [1] of" in p for p in lost.problems), lost.problems


def test_a_node_that_accepted_nothing_takes_part(anvil, tmp_path):
    splits = [[4, 1, 0], [], [3, 8, 6, 5, 9, 2, 7]]
    task = anvil.create_task(aggregator=anvil.sender, participants=ADDRESSES, model_spec=b"n")
    x = make_updates(N, D, seed=44)
    job = dict(
        url=anvil.w3.provider.endpoint_uri, address=anvil.address, task=task, rule="median",
        f=2, stores=[str(tmp_path / f"store{r}") for r in range(3)], out=str(tmp_path),
        die=None, timeout=60, splits={1: splits}, rounds=[(1, signed(anvil, task, 1, x))],
    )  # fmt: skip
    codes, outs = run_nodes(3, job)
    assert codes == [0, 0, 0], (codes, outs)
    one = single_round(x, "median", 2, canonical(3, splits))
    for o in outs:
        assert o[1][:2] == (one.root, one.result_digest)
        assert torch.equal(o[1][2], one.update)
    assert audit(anvil, task, 1, job["stores"]).ok


@pytest.mark.parametrize(
    ("rule", "f", "pre"),
    [("centered_clipping", 2, []), ("median", 2, ["nnm", ("clip", {"max_norm": 30.0})])],
    ids=["centered_clipping", "nnm+clip+median"],
)
def test_torch_only_steps_over_nodes_commit_what_one_round_commits(anvil, tmp_path, rule, f, pre):
    """An iterative rule, or pre-steps, over 2 nodes (each node's round left on backend None:
    they pin the torch step they run) commit the single round's root and result bits."""
    world = 2
    task = anvil.create_task(aggregator=anvil.sender, participants=ADDRESSES, model_spec=b"n")
    x = make_updates(N, D, seed=46)
    job = dict(
        url=anvil.w3.provider.endpoint_uri, address=anvil.address, task=task, rule=rule, f=f,
        stores=[str(tmp_path / f"store{r}") for r in range(world)], out=str(tmp_path),
        die=None, timeout=60, splits={1: SPLITS[world]}, rounds=[(1, signed(anvil, task, 1, x))],
        backend=None, pre=pre,
    )  # fmt: skip
    codes, outs = run_nodes(world, job)
    assert codes == [0] * world, (codes, outs)
    one = single_round(x, rule, f, canonical(world), pre=pre)
    for o in outs:
        assert o[1][:2] == (one.root, one.result_digest), o[1]
        assert torch.equal(o[1][2], one.update)
    assert audit(anvil, task, 1, job["stores"]).ok


@pytest.mark.parametrize(
    ("where", "dead"),
    [("aggregate", 2), ("commit", 0)],
    ids=["node2-dies-in-the-aggregate", "node0-dies-after-its-commit"],
)
def test_a_node_killed_mid_round_loses_nothing_and_the_rerun_commits(anvil, tmp_path, where, dead):
    world = 3
    rule, f = CASES[world]
    task = anvil.create_task(aggregator=anvil.sender, participants=ADDRESSES, model_spec=b"n")
    x = make_updates(N, D, seed=43)
    job = dict(
        url=anvil.w3.provider.endpoint_uri, address=anvil.address, task=task, rule=rule, f=f,
        stores=[str(tmp_path / f"store{r}") for r in range(world)], out=str(tmp_path),
        die=where, timeout=TIMEOUT_S, splits={1: SPLITS[world]},
        rounds=[(1, signed(anvil, task, 1, x))],
    )  # fmt: skip
    codes, outs = run_nodes(world, job)
    assert codes == [3 if r == dead else 0 for r in range(world)], (codes, outs)
    for r in range(world):
        if r == dead:
            continue
        text = outs[r][1]
        assert text.startswith("PeerFailure after"), text
        assert float(text.split()[2].rstrip("s:")) < TIMEOUT_S + 2.0, text
        assert f"rank {r} of {world}" in text
    committed = anvil.record(task, 1)
    assert (committed is not None) == (where == "commit")
    for r, s in enumerate(job["stores"]):  # every acknowledged payload is intact in its store
        [log] = list(Path(s).rglob("accepted.log"))
        held = RoundLog(log, readonly=True)
        assert [rec["client"] for rec in held.records] == [
            ADDRESSES[i].lower() for i in SPLITS[world][r]
        ]
        for rec in held.records:
            held.payload(rec["digest"], hasher=payload_digest)
    # The rerun: the nodes start again on their stores; the clients retry (idempotent).
    (tmp_path / "rerun").mkdir()
    codes, outs = run_nodes(world, dict(job, die=None, timeout=60, out=str(tmp_path / "rerun")))
    assert codes == [0] * world, (codes, outs)
    one = single_round(x, rule, f, canonical(world))
    for o in outs:
        assert o[1][:2] == (one.root, one.result_digest)
        assert torch.equal(o[1][2], one.update)
    after = anvil.record(task, 1)
    assert (after.updates_root, after.result_digest) == (one.root, one.result_digest)
    if committed is not None:  # the rerun found the commit and sent nothing
        assert after.tx_hash == committed.tx_hash
    assert audit(anvil, task, 1, job["stores"]).ok


@pytest.fixture
def one_node():
    """A process group of one node, in this process (destroyed after)."""
    dist.init_process_group(
        "gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1
    )
    try:
        yield
    finally:
        dist.destroy_process_group()


def test_rounds_a_node_cannot_run_are_refused_before_anything_changes(one_node, tmp_path):
    from bcfl_engine.errors import InvalidArgument
    from bcfl_engine.round_nodes import finalize_nodes

    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"n")
    x = make_updates(N, D, seed=45)
    ps = signed(ledger, task, 1, x)

    def node(store, **kw):
        rnd = AggregationRound(
            ledger, task, 1, tmp_path / store, participants=ADDRESSES, dim=D, **kw
        )
        rnd.submit_many(ps[:5])
        return rnd

    cases = [
        (node("gm", rule="geometric_median", backend="native"), {}, "torch reference's step"),
        (node("pre", rule="median", f=1, pre=["nnm"], backend="native"), {}, "with pre-steps"),
        (node("rank", rule="mean"), {"commit_rank": 1}, "commit_rank must be in [0, 1)"),
    ]
    for rnd, kw, says in cases:
        with pytest.raises(InvalidArgument, match=re.escape(says)):
            finalize_nodes(rnd, **kw)
        assert ledger.record(task, 1) is None
        assert rnd.store.read_round(rnd.key, 1) is None
    empty = AggregationRound(ledger, task, 1, tmp_path / "e", participants=ADDRESSES, dim=D)
    with pytest.raises(InvalidArgument, match="no accepted payload on any node"):
        finalize_nodes(empty)
    # One node is a single round: the same commit as AggregationRound.finalize.
    ok = node("ok", rule="trimmed_mean", f=1, backend="torch")
    res = finalize_nodes(ok)
    one = single_round(x, "trimmed_mean", 1, range(5))
    assert (res.root, res.result_digest) == (one.root, one.result_digest)
    assert torch.equal(res.update, one.update)
    assert ledger.record(task, 1).updates_root == res.root
    with pytest.raises(InvalidArgument, match="finalized already"):
        finalize_nodes(ok)
