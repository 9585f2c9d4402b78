"""The signed, durable round against the machine's floor, and at scale (used by bench_round.py).

A round is ``AggregationRound.submit_many`` of every signed payload (one burst: digests,
signature recovery, checks, one group written and fsynced) and then ``finalize`` (aggregate,
result and metadata stored, Merkle tree, commit transaction). Its floor is what no aggregator of
the same bytes avoids, each measured in the same run on the same filesystem:

- one sequential write of the payloads' bytes and one fsync;
- one bare commit transaction on the same chain;
- the bare aggregate of the same updates (:func:`bcfl_engine.aggregate`).

Each is measured before and after the round and the smaller time kept, after one unmeasured
write of the same bytes (a process's first large write also pays for the page cache to grow:
2.8 s against 0.5 s for 1 GiB here); on a shared virtual machine the same write + fsync still
took 0.1 to 0.6 s for 160 MiB from one minute to the next.

Parts are timed by wrapping the round's own steps (a few calls per burst), so the total is the
round's own time and "other" is what no named part covers. A burst of 4,096 payloads or more
is pipelined (:data:`bcfl_engine.round_intake.PART`): a part's frame is written while the next
part's signers are recovered, so there the parts overlap and "other" goes below zero by the
time they overlap.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

from bcfl_engine import aggregate
from bcfl_engine.updates import keccak256


def signer(keys: list[bytes], ledger: Any, task: int) -> Callable[[int, bytes, int], Any]:
    """Sign like eth-account (EIP-712, low s, v in {27, 28}) with libsecp256k1 directly: the
    client's cost, kept out of the aggregator's time and fast enough for 10,000 clients."""
    from coincurve import PrivateKey

    from bcfl_engine.chain.signing import eip712_digest
    from bcfl_engine.protocol import Payload, payload_digest

    private = [PrivateKey(k) for k in keys]
    addresses = [
        "0x" + keccak256(p.public_key.format(compressed=False)[1:])[12:].hex() for p in private
    ]

    def sign(i: int, data: bytes, weight: int) -> Any:
        message = eip712_digest(ledger.domain, task, 1, payload_digest(data), weight)
        rs_v = private[i].sign_recoverable(message, hasher=None)
        return Payload(addresses[i], data, rs_v[:64] + bytes([27 + rs_v[64]]), weight)

    sign.addresses = addresses  # type: ignore[attr-defined]
    return sign


@contextmanager
def timed(parts: dict[str, float], owner: Any, name: str, label: str) -> Iterator[None]:
    """Add the seconds spent in ``owner.name`` to ``parts[label]`` while inside."""
    real = getattr(owner, name)

    def wrapper(*args: Any, **kw: Any) -> Any:
        t0 = time.perf_counter()
        try:
            return real(*args, **kw)
        finally:
            parts[label] = parts.get(label, 0.0) + time.perf_counter() - t0

    setattr(owner, name, wrapper)
    try:
        yield
    finally:
        setattr(owner, name, real)


def write_fsync(blobs: list[bytes], folder: str) -> float:
    """Seconds to write ``blobs`` to one new file, sequentially, and fsync it. The file stays
    until its folder goes (a deletion's discards would slow the next measured write)."""
    path = os.path.join(folder, f"floor-{time.monotonic_ns()}.bin")
    t0 = time.perf_counter()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        for i in range(0, len(blobs), 1024):
            os.writev(fd, blobs[i : i + 1024])
        os.fsync(fd)
    finally:
        os.close(fd)
    return time.perf_counter() - t0


def one_round(x: torch.Tensor, rule: str, f: int, folder: str) -> dict[str, float]:
    """One signed durable round of the rows of ``x`` (weights 1..n) and its floor, in seconds."""
    import bcfl_engine.chain as chain
    from bcfl_engine.chain import Ledger
    from bcfl_engine.round import AggregationRound, encode_update
    from bcfl_engine.round_log import RoundLog

    n, d = x.shape
    keys = [keccak256(b"bench hospital %d" % i) for i in range(n)]
    ledger = Ledger.embedded()
    probe = signer(keys, ledger, 0)
    task = ledger.create_task(
        aggregator=ledger.sender, participants=probe.addresses, model_spec=b"b"
    )
    sign = signer(keys, ledger, task)
    blobs = [encode_update(x[i]) for i in range(n)]
    payloads = [sign(i, blobs[i], 1 + i % 7) for i in range(n)]
    parts: dict[str, float] = {}
    bare_task = ledger.create_task(
        aggregator=ledger.sender, participants=probe.addresses[:1], model_spec=b"f"
    )
    weights = torch.tensor([1 + i % 7 for i in range(n)], dtype=torch.float64)
    floors: list[dict[str, float]] = []

    def floor() -> None:
        """The floor, same run, same filesystem: measured before and after the round, the
        smaller of the two kept (this machine's disk and page cache vary run to run)."""
        got = {"floor: write + fsync": write_fsync(blobs, folder)}
        t0 = time.perf_counter()
        ledger.commit_round(
            bare_task,
            round=len(floors) + 1,
            updates_root=os.urandom(32),
            result_digest=os.urandom(32),
            meta=os.urandom(32),
            n=1,
        )
        got["floor: commit tx"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        aggregate(x, rule=rule, f=f, **({"weights": weights} if rule == "mean" else {}))
        got["floor: aggregate"] = time.perf_counter() - t0
        floors.append(got)

    write_fsync(blobs, folder)  # warm-up: a first large write also pays for page-cache growth
    floor()
    # The round.
    rnd = AggregationRound(
        ledger,
        task,
        1,
        os.path.join(folder, "store"),
        participants=probe.addresses,
        dim=d,
        rule=rule,
        f=f,
    )
    with (
        timed(parts, chain, "verify_payloads", "signatures"),
        timed(parts, AggregationRound, "_check_group", "checks + copy"),
        timed(parts, RoundLog, "append", "group write + fsync"),
        timed(parts, RoundLog, "sync", "group write + fsync"),
        timed(parts, ledger, "commit_round", "commit tx"),
    ):
        t0 = time.perf_counter()
        out = rnd.submit_many(payloads)
        parts["submit_many"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        res = rnd.finalize()
        parts["finalize"] = time.perf_counter() - t0
    assert all(isinstance(r, dict) for r in out), "a payload was refused"
    floor()
    for key in floors[0]:
        parts[key] = min(f[key] for f in floors)
    parts["aggregate"] = res.seconds
    parts["total"] = parts["submit_many"] + parts["finalize"]
    parts["floor"] = sum(v for k, v in parts.items() if k.startswith("floor: "))
    named = ("signatures", "checks + copy", "group write + fsync", "aggregate", "commit tx")
    parts["other"] = parts["total"] - sum(parts.get(k, 0.0) for k in named)
    return parts


def durable_round(x: torch.Tensor, repeats: int, rule: str = "median") -> dict[str, float]:
    """Median over ``repeats`` of each part of :func:`one_round`."""
    f = max(1, x.shape[0] // 10) if rule != "mean" else 0
    runs = []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory(dir=os.environ.get("BCFL_BENCH_DIR")) as folder:
            runs.append(one_round(x, rule, f, folder))
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


ORDER = (
    "signatures",
    "checks + copy",
    "group write + fsync",
    "aggregate",
    "commit tx",
    "other",
    "submit_many",
    "finalize",
    "total",
    "floor: write + fsync",
    "floor: commit tx",
    "floor: aggregate",
    "floor",
)


def report(parts: dict[str, float], n: int) -> None:
    """Print each part in ms and as a share of the floor, then the round's verdict."""
    floor = parts["floor"]
    for name in ORDER:
        print(f"  {name:<22} {1e3 * parts[name]:>10.1f} ms {parts[name] / floor:>7.2f} x floor")
    print(
        f"  -> durable submits/s: {n / parts['submit_many']:,.0f}; "
        f"round total / floor: {parts['total'] / floor:.2f} (goal <= 1.5)"
    )
