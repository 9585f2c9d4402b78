"""The aggregator killed (SIGKILL) at every step of a group commit, then restarted.

A child process runs a round on anvil (the chain outlives the aggregator, as in production):
it submits a first burst (acknowledged), then a second one during which it kills itself at one
step of the group commit: part way through the frame's bytes (its prefix, records, payloads or
check), with the frame written but not synced, right after the sync, and after the sync before
the round takes the rows. The parent then finds every acknowledged payload intact, the log made
of whole groups only, and a restarted round that takes the clients' retries and finalizes to
the root and result of an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import make_updates

from bcfl_engine.protocol import payload_digest
from bcfl_engine.round import AggregationRound, audit, encode_update, sign_payload
from bcfl_engine.round_log import RoundLog
from bcfl_engine.store import PayloadStore
from bcfl_engine.updates import keccak256

pytest.importorskip("web3")
from eth_account import Account

from bcfl_engine.chain import Ledger

N, D = 6, 300
FIRST = 2  # clients of the first, acknowledged burst; the others come in the second
KEYS = [keccak256(f"crash hospital {i}".encode()) for i in range(N)]
ADDRESSES = [Account.from_key(k).address for k in KEYS]
ROOT = Path(__file__).resolve().parents[1]
ANVIL_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"

AGGREGATOR = textwrap.dedent(
    """
    import os, pickle, signal, sys
    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound
    url, key, address, task, store, path, point, dim, first = sys.argv[1:10]
    ps = pickle.load(open(path, "rb"))
    ledger = Ledger.connect(url, key=key, address=address)
    rnd = AggregationRound(ledger, int(task), 1, store, participants=[p.client for p in ps], dim=int(dim))
    assert all(isinstance(r, dict) for r in rnd.submit_many(ps[:int(first)]))
    print("acked first", flush=True)

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    kind, _, where = point.partition(":")
    if kind == "bytes":  # write the frame up to a fraction of its bytes (or all but k), then die
        real = os.pwritev
        def pwritev(fd, buffers, offset):
            data = b"".join(bytes(b) for b in buffers)
            stop = int(float(where) * len(data)) if "." in where else len(data) - int(where)
            real(fd, [data[:stop]], offset)
            die()
        os.pwritev = pwritev
    elif kind == "sync":
        real_sync = os.fdatasync
        def fdatasync(fd):
            if where == "after":
                real_sync(fd)
            die()
        os.fdatasync = fdatasync
    elif kind == "take":
        AggregationRound._take = lambda self, records, batch: die()
    rnd.submit_many(ps[int(first):])
    print("acked second", flush=True)
    """
)

POINTS = [
    "bytes:0.0",  # nothing of the frame
    "bytes:0.001",  # inside the prefix
    "bytes:0.01",  # inside the records
    "bytes:0.5",  # inside the payloads
    "bytes:33",  # the payloads, not the check
    "bytes:1",  # all but the check's last byte
    "bytes:0",  # the whole frame, unsynced
    "sync:before",
    "sync:after",
    "take:",
]


@pytest.fixture(scope="module")
def anvil(anvil_url):
    return Ledger.connect(anvil_url, key=ANVIL_KEY)


@pytest.fixture(scope="module")
def reference(anvil, tmp_path_factory):
    """Root and result digest of the same payloads submitted without a crash."""
    task, ps = round_payloads(anvil)
    rnd = AggregationRound(
        anvil, task, 1, tmp_path_factory.mktemp("ref"), participants=ADDRESSES, dim=D
    )
    rnd.submit_many(ps[:FIRST])
    rnd.submit_many(ps[FIRST:])
    res = rnd.finalize()
    return res.root, res.result_digest


def round_payloads(ledger):
    task = ledger.create_task(aggregator=ledger.sender, participants=ADDRESSES, model_spec=b"c")
    x = make_updates(N, D, seed=21)
    ps = [
        dataclasses.replace(
            sign_payload(KEYS[i], task, 1, encode_update(x[i]), ledger.domain, weight=i + 1),
            salt=keccak256(b"crash salt %d" % i),
        )
        for i in range(N)
    ]
    return task, ps


@pytest.mark.slow
@pytest.mark.parametrize("point", POINTS)
def test_killed_at_any_step_of_a_group_commit_loses_no_acknowledged_payload(
    anvil, reference, tmp_path, point
):
    task, ps = round_payloads(anvil)
    (tmp_path / "p.pkl").write_bytes(pickle.dumps(ps))
    (tmp_path / "agg.py").write_text(AGGREGATOR)
    store = tmp_path / "store"
    url = anvil.w3.provider.endpoint_uri
    args = [sys.executable, str(tmp_path / "agg.py"), url, ANVIL_KEY, anvil.address, str(task)]
    child = subprocess.run(
        [*args, str(store), str(tmp_path / "p.pkl"), point, str(D), str(FIRST)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
    )
    assert child.returncode == -9, child.stderr[-2000:]  # killed, as a crash
    assert child.stdout.split() == ["acked", "first"]  # the second burst was never acknowledged

    # The log holds whole groups only: the first (acknowledged), and the second only if the
    # kill came after its last byte was written.
    path = PayloadStore(store, readonly=True).round_dir(task, 1) / "accepted.log"
    before = RoundLog(path, readonly=True)
    assert not before.problems
    whole_second = point in ("bytes:0", "sync:before", "sync:after", "take:")
    assert len(before.frames) == (2 if whole_second else 1)
    first = [r["client"] for r in before.frames[0].records]
    assert first == [p.client.lower() for p in ps[:FIRST]]
    for r in before.records:  # every payload in the log is intact
        before.payload(r["digest"], hasher=payload_digest)

    # Restart: the clients retry; the round finalizes to what an uninterrupted run commits.
    rnd = AggregationRound(anvil, task, 1, store, participants=ADDRESSES, dim=D)
    assert len(rnd) == len(before.records)
    assert all(isinstance(r, dict) for r in rnd.submit_many(ps))
    res = rnd.finalize()
    assert (res.root, res.result_digest) == reference
    assert audit(anvil, task, 1, store).ok
