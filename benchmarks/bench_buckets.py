"""A robust secure round (median over buckets) against secure FedAvg and plaintext median.

One run, the same ``n`` client updates of ``d`` reals (stock TenSEAL vectors under a 3-party
"threshold" key for the secure rounds, float32 for the plaintext one), each round through
:class:`~bcfl_engine.round.AggregationRound` on the embedded chain (intake not timed):

- ``bucketed median``: seal + beacon + the bucket sums (``decryption_request``), one party's
  decryption shares of every bucket sum (``party_share``: its checks of the request included;
  the parties work in parallel, so one party's time is the phase's), the combination of the
  shares, the rule on the bucket means, and ``finalize`` (combination, rule, commit);
- ``secure FedAvg``: the same phases with one aggregate of every payload (its running sum is
  built as the payloads are accepted, at intake, which is not timed: its ``sums`` is reading the
  payloads back and writing the aggregate);
- ``plaintext median``: ``finalize`` (the rule on the updates, commit).

Ratios are against secure FedAvg's total and plaintext median's.

    python benchmarks/bench_buckets.py               # n = 256, d = 16,384 (2 cores: ~1 min)
    python benchmarks/bench_buckets.py --d 262144    # the issue's size (a large machine)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import numpy as np


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """File descriptors 1 and 2 to /dev/null (C++ writes there directly)."""
    sys.stdout.flush()
    saved = [os.dup(1), os.dup(2)]
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 1)
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in (*saved, null):
            os.close(fd)


def _round(ledger: Any, task: int, store: str, clients: list[str], blobs: list[bytes],
           signers: list[bytes], **kw: Any) -> Any:  # fmt: skip
    from bcfl_engine.round import AggregationRound, Payload, sign_payload

    rnd = AggregationRound(ledger, task, 1, store, participants=clients, **kw)
    signed: list[Payload] = [
        sign_payload(k, task, 1, b, ledger.domain, weight=1)
        for k, b in zip(signers, blobs, strict=True)
    ]
    rnd.submit_many(signed)
    return rnd


def secure(
    name: str, rule: str, f: int, ctx: dict[str, Any], blobs: list[bytes]
) -> dict[str, float]:
    from bcfl_engine.chain import Ledger
    from bcfl_engine.decryption import party_share
    from bcfl_engine.he.mpepoch import open_epoch
    from bcfl_engine.round_decrypt import bucket_means, combine

    ledger = Ledger.embedded()
    task = ledger.create_task(
        aggregator=ledger.sender, participants=ctx["clients"], model_spec=b"b"
    )
    keys = open_epoch(ledger, task, ctx["keys"])
    with tempfile.TemporaryDirectory() as store:
        rnd = _round(ledger, task, store, ctx["clients"], blobs, ctx["client_keys"],
                     secure="ckks", keys=keys, rule=rule, f=f)  # fmt: skip
        t = {}
        t0 = time.perf_counter()
        req = rnd.decryption_request()
        t["sums"] = time.perf_counter() - t0
        shares = {}
        for p in req.active:
            t0 = time.perf_counter()
            shares[p] = party_share(ctx["parties"][p], ctx["party_keys"][p], req, keys=keys,
                                    ledger=ledger, participants=ctx["clients"])  # fmt: skip
            t.setdefault("share", time.perf_counter() - t0)  # one party's: they run in parallel
            rnd.add_share(shares[p])
        t0 = time.perf_counter()
        plain = combine(keys, req.aggregates, {p: s.shares for p, s in shares.items()})
        t["combine"] = time.perf_counter() - t0
        if req.buckets is not None:
            from bcfl_engine import aggregate

            w = [sum(1 for _ in b) for b in req.buckets]
            t0 = time.perf_counter()
            aggregate(bucket_means(plain, w), rule=rule, f=f)
            t["rule"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        rnd.finalize()
        t["finalize"] = time.perf_counter() - t0
        t["total"] = t["sums"] + t["share"] + t["finalize"]
        t["buckets"] = len(req.aggregates)
    return t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--d", type=int, default=16_384)
    ap.add_argument("--f", type=int, default=25)
    args = ap.parse_args()

    import tenseal as ts
    from eth_account import Account

    from bcfl_engine.chain import Ledger
    from bcfl_engine.he import multiparty as mp
    from bcfl_engine.he.mpepoch import KeyEpoch, parties_of
    from bcfl_engine.protocol import encode_update
    from bcfl_engine.updates import keccak256

    parties = [mp.KeyShare.generate(party=i) for i in (1, 2, 3)]
    public, crs = mp.local_setup(parties)
    party_keys = {i: keccak256(b"party %d" % i) for i in (1, 2, 3)}
    accounts = {i: Account.from_key(k).address for i, k in party_keys.items()}
    keys = KeyEpoch(public, parties_of({p.party: p.commitment(crs) for p in parties}, accounts), 3)
    client_keys = [keccak256(b"client %d" % i) for i in range(args.n)]
    clients = [Account.from_key(k).address for k in client_keys]
    rng = np.random.default_rng(0)
    x = rng.normal(0, 0.1, (args.n, args.d))
    t0 = time.perf_counter()
    tctx = ts.context_from(public)
    with quiet():  # TenSEAL warns on stdout for every vector over one ciphertext
        blobs = [ts.ckks_vector(tctx, row.tolist()).serialize() for row in x]
    print(f"n={args.n} d={args.d} f={args.f}: {args.n} clients encrypted in "
          f"{time.perf_counter() - t0:.1f} s ({sum(map(len, blobs)) / 2**20:.0f} MiB)")  # fmt: skip
    ctx = {"clients": clients, "client_keys": client_keys, "keys": keys,
           "parties": {p.party: p for p in parties}, "party_keys": party_keys}  # fmt: skip
    robust = secure("bucketed median", "median", args.f, ctx, blobs)
    fedavg = secure("secure FedAvg", "mean", 0, ctx, blobs)
    ledger = Ledger.embedded()
    task = ledger.create_task(aggregator=ledger.sender, participants=clients, model_spec=b"p")
    with tempfile.TemporaryDirectory() as store:
        plain_blobs = [encode_update(row.astype(np.float32)) for row in x]
        rnd = _round(ledger, task, store, clients, plain_blobs, client_keys, dim=args.d,
                     rule="median", f=args.f)  # fmt: skip
        t0 = time.perf_counter()
        rnd.finalize()
        plain = time.perf_counter() - t0
    print(f"{'phase':<22} {'bucketed median':>16} {'secure FedAvg':>14}")
    for phase in ("sums", "share", "combine", "rule", "finalize", "total"):
        a, b = robust.get(phase), fedavg.get(phase)
        show = lambda v: "-" if v is None else f"{1e3 * v:.0f} ms"  # noqa: E731
        print(f"{phase:<22} {show(a):>16} {show(b):>14}")
    print(f"buckets: {robust['buckets']:.0f} (of {args.n // robust['buckets']:.0f}+ clients each)")
    print(f"plaintext median finalize: {1e3 * plain:.0f} ms")
    print(f"bucketed median / secure FedAvg: {robust['total'] / fedavg['total']:.2f}x; "
          f"bucketed median / plaintext median: {robust['total'] / plain:.1f}x")  # fmt: skip


if __name__ == "__main__":
    main()
