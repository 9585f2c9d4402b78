"""The distributed aggregate over a round's stored payloads, with a rank killed mid-aggregation.

A round ingests signed payloads into its store (the embedded chain holds the task). Three gloo
ranks each read their clients' payloads from the store (:func:`load_rows`, read-only) and
aggregate; one rank exits in the middle of the all-to-all. The others raise PeerFailure within
the group's timeout; every stored byte is unchanged; a rerun gives the single-process bits; and
the round, reopened from its store, finalizes to the same result.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import time
from datetime import timedelta
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from helpers import run_ranks
from store_tools import flip_payload_byte

import bcfl_engine
from bcfl_engine import distributed
from bcfl_engine.distributed_store import load_rows, round_clients
from bcfl_engine.errors import InvalidArgument, PayloadError, PeerFailure
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger
from bcfl_engine.round import AggregationRound, encode_update, sign_payload

N, D, WORLD = 10, 5003, 3
RULE, F = "median", 2
KEYS = [keccak256(f"sharded hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
TIMEOUT_S = 5  # the process group's timeout, seconds
DIE_AT = 3  # the dying rank exits at its third all-to-all round (of about twenty)


def _updates() -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    x = torch.randn(N, D, generator=g) * 0.1 + 1.0
    x[-2:] += 5.0 * torch.randn(2, D, generator=g)
    return x


def _split(n: int, world: int) -> list[tuple[int, int]]:
    """Consecutive runs of the round's order, uneven: 4, 1 and 5 rows."""
    return [(0, 4), (4, 5), (5, n)] if world == 3 else [(0, n)]


def _worker(rank: int, world: int, port: int, root: str, key: str, out_dir: str, die: bool):
    torch.set_num_threads(1)
    dist.init_process_group(
        "gloo",
        init_method=f"tcp://127.0.0.1:{port}",
        rank=rank,
        world_size=world,
        timeout=timedelta(seconds=TIMEOUT_S),
    )
    clients = round_clients(root, key, 1)
    a, b = _split(len(clients), world)[rank]
    rows = load_rows(root, key, 1, D, clients[a:b])
    if die and rank == world - 1:
        real, calls = dist.all_to_all_single, [0]

        def dying(*args, **kwargs):
            calls[0] += 1
            if calls[0] == DIE_AT:
                os._exit(3)
            return real(*args, **kwargs)

        dist.all_to_all_single = dying  # type: ignore[assignment]
    results: dict[str, object] = {}
    start = time.monotonic()
    try:
        kw = dict(client_ids=rows.clients, backend="torch", send_bytes=4096)
        results["rule"] = distributed.aggregate(rows.x, rule=RULE, f=F, **kw)
        results["mean"] = distributed.aggregate(rows.x, rule="mean", weights=rows.weights, **kw)
        results["outcome"] = "returned"
    except PeerFailure as exc:
        results["outcome"] = f"PeerFailure after {time.monotonic() - start:.1f}s: {exc}"
    except Exception as exc:  # any other type is reported, and fails the test
        results["outcome"] = f"{type(exc).__name__}: {exc}"
    torch.save(results, Path(out_dir, f"rank{rank}.pt"))
    os._exit(0)  # after a failure the group is broken: no orderly shutdown


def _spawn(root: Path, key: str, out: Path, die: bool) -> list[int | None]:
    out.mkdir()
    return run_ranks(_worker, WORLD, (str(root), key, str(out), die), timeout_s=90)


def _snapshot(root: Path) -> dict[str, str]:
    """Every file of the store by its sha256."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    """A round whose payloads the store holds, not finalized: (ledger, task, root, key, x)."""
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"t")
    root = tmp_path_factory.mktemp("store")
    rnd = AggregationRound(
        ledger, task, 1, root, participants=ADDRESSES, dim=D, rule=RULE, f=F, backend="torch"
    )
    x = _updates()
    signed = [
        sign_payload(KEYS[i], task, 1, encode_update(x[i]), ledger.domain, weight=i + 1)
        for i in range(N)
    ]
    rnd.submit_many(signed[:6])  # two groups of the round's log
    rnd.submit_many(signed[6:])
    return ledger, task, root, rnd.key, x


def test_killed_rank_leaves_the_store_intact_and_a_rerun_gives_one_process_bits(ingested, tmp_path):
    ledger, task, root, key, x = ingested
    before = _snapshot(root)
    assert any(name.endswith("accepted.log") for name in before)

    codes = _spawn(root, key, tmp_path / "killed", die=True)
    assert codes == [0, 0, 3], codes
    for r in range(WORLD - 1):
        text = str(torch.load(tmp_path / "killed" / f"rank{r}.pt")["outcome"])
        assert text.startswith("PeerFailure after"), text
        assert float(text.split()[2].rstrip("s:")) < TIMEOUT_S, text
        assert "all-to-all" in text and f"rank {r} of {WORLD}" in text, text
    assert _snapshot(root) == before  # no stored byte changed, none added or removed

    codes = _spawn(root, key, tmp_path / "rerun", die=False)
    assert codes == [0, 0, 0], codes
    want = bcfl_engine.aggregate(x, rule=RULE, f=F, backend="torch")
    weights = torch.arange(1, N + 1, dtype=torch.float64)
    want_mean = bcfl_engine.aggregate(x, rule="mean", weights=weights, backend="torch")
    for r in range(WORLD):
        res = torch.load(tmp_path / "rerun" / f"rank{r}.pt")
        assert res["outcome"] == "returned", res["outcome"]
        assert torch.equal(res["rule"], want), f"rank {r}"
        assert torch.equal(res["mean"], want_mean), f"rank {r}"
    assert _snapshot(root) == before

    # The store still opens as a writer, the round resumes from it (every payload's digest and
    # signature checked again) and finalizes to the distributed result.
    rnd = AggregationRound(
        ledger,
        task,
        1,
        PayloadStore(root),
        participants=ADDRESSES,
        dim=D,
        rule=RULE,
        f=F,
        backend="torch",
    )
    assert len(rnd) == N
    done = rnd.finalize()
    assert torch.equal(torch.as_tensor(done.update), want)
    assert done.result_digest == bcfl_engine.protocol.payload_digest(encode_update(want))


def test_load_rows_reads_the_round_order_and_checks_digests(ingested, tmp_path):
    _, _, root, key, x = ingested
    clients = round_clients(root, key, 1)
    assert clients == [a.lower() for a in ADDRESSES]
    rows = load_rows(root, key, 1, D, [ADDRESSES[7], ADDRESSES[2]])  # any order, any case
    assert rows.clients == [clients[2], clients[7]]
    assert torch.equal(rows.x, x[[2, 7]]) and rows.weights.tolist() == [3.0, 8.0]
    with pytest.raises(InvalidArgument, match="one string"):
        load_rows(root, key, 1, D, ADDRESSES[0])
    with pytest.raises(InvalidArgument, match="accepted no payload"):
        load_rows(root, key, 1, D, ["0x" + "11" * 20])
    # A payload altered on disk is refused, naming its digest (on a copy of the store).
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    flip_payload_byte(PayloadStore(copy), key, 1, rows.digests[0])
    with pytest.raises(PayloadError, match=f"0x{rows.digests[0]} was altered"):
        load_rows(copy, key, 1, D, clients[2:3])
