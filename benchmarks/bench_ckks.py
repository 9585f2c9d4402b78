"""CKKS secure aggregation, side by side in one run on the same payloads.

Providers, each summing the same ``n`` clients' encryptions of ``d`` reals (default preset):

- ``tenseal``: the reference (NVIDIA FLARE's path): ``acc += ts.ckks_vector_from(ctx, blob)``
  over stock ``CKKSVector.serialize()`` payloads (zstd), then ``acc.serialize()``;
- ``zstd-only``: just decoding those payloads' zstd frames (python-zstandard, one thread): the
  part of TenSEAL's loop no aggregator of stock payloads can skip, so the ceiling of the stock
  ratio is about ``tenseal / (zstd-only / cores)``;
- ``bcfl-stock``: :func:`bcfl_engine.he.aggregate` on the same stock payloads (fused path:
  each payload decoded straight into the modular sum); ``bcfl-stock-2p``: the two-pass path
  (parse into a ``CiphertextBatch``, then ``ckks_sum``), for comparison;
- ``bcfl-compact`` / ``-2p``: on compact payloads (lowest level, bit-packed), fused / two-pass;
  ``bcfl-raw``: compact, u64 residues (not bit-packed); ``bcfl-paired``: two reals per slot;
  ``bcfl-compact-gpu`` (where CUDA is available): compact payloads parsed on the host, summed by
  the Triton kernel on the device.

Every provider runs once per round, rounds interleaved (``--repeat`` of them, so that load
from other work hits every provider alike); times are medians over rounds.
Reported: seconds, parameters summed per second and the ratio to TenSEAL's (on the same
parameters), payload GB/s, bytes per parameter on the wire, and the machine's memory-read floor
(GB/s of a multi-threaded int64 sum over a buffer larger than the caches) as the ceiling of a
memory-bound sum: ``% floor`` of the medians, and ``rounds`` the lowest and highest of each
round's own ratio (its time against the floor measured in that round). Encrypting n x 262144 reals takes ~1 s per client, so ``--distinct`` clients
are encrypted and their payloads cycled to ``n`` (every provider parses every payload anyway),
each cycled payload a private copy in memory so that none is read from cache.

Lean payloads (preset "lean", 2^42, paired) are summed side by side as ``bcfl-lean`` (fused:
unpacked straight into the sum mod 2^b) and ``bcfl-lean-2p`` (unpacked into a batch, then the
native sum), each against the memory floor like the others. ``read-lean`` only reads the same
lean payloads (every word summed by numpy, one thread per core): it checks that the floor is an
honest read of those bytes where they lie (n separate buffers), not of one friendlier buffer.

``--wire`` prints the other side of the cost, one row per payload kind: bytes per parameter,
bits on the mean (-log2 of the worst coordinate's error of the decrypted mean) of
``--clients`` clients of 8,192 reals in [-1, 1], every client encrypted on its own (repeated
payloads would correlate the noise), and the client's encryption time per million parameters
(median of ``--repeat``). ``Preset.mean_precision`` states these bits with a margin.

    python benchmarks/bench_ckks.py            # n = 32 and 256, d = 262144
    python benchmarks/bench_ckks.py --quick    # n = 4, d = 8192: a smoke run
    python benchmarks/bench_ckks.py --wire     # bytes, bits on the mean of 1,000, encryption
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch

FLOOR_BYTES = 512 << 20


def memory_floor_gbps(nbytes: int = FLOOR_BYTES) -> float:
    x = torch.ones(nbytes // 8, dtype=torch.int64)
    x.sum()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def timed(fn) -> float:  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--quick", action="store_true", help="tiny sizes: n=4, d=8192")
    ap.add_argument("--n", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--d", type=int, default=262144)
    ap.add_argument(
        "--distinct", type=int, default=4, help="distinct clients encrypted, cycled to n"
    )
    ap.add_argument("--preset", default="default")
    ap.add_argument("--repeat", type=int, default=3, help="interleaved rounds (median)")
    ap.add_argument("--wire", action="store_true", help="bytes, bits on the mean, encryption")
    ap.add_argument("--clients", type=int, default=1000, help="--wire: clients of the mean")
    args = ap.parse_args()
    if args.wire:
        wire_table(args.clients, args.repeat)
        return
    if args.quick:
        args.n, args.d, args.distinct, args.repeat = [4], 8192, 2, 1

    import tenseal as ts
    import zstandard

    from bcfl_engine import he
    from bcfl_engine.he import wire

    keys = he.generate_keys(args.preset)
    pub, ctx = keys.public_context(), keys.secret_context
    pub_ctx = ts.context_from(pub)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, args.d) for _ in range(args.distinct)]
    sys.stdout.flush()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # TenSEAL's C++ warns on stdout for every multi-chunk vector
    try:
        stock = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)
    compact = [he.encrypt(x, pub) for x in xs]
    raw = [he.encrypt(x, pub, bitpacked=False) for x in xs]
    paired = [he.encrypt(x, pub, pair=True) for x in xs]
    lean_pub = he.generate_keys("lean").public_context()
    lean = [he.encrypt(x / max(1.0, float(np.abs(x).max())), lean_pub) for x in xs]

    def tenseal_sum(blobs: list[bytes]) -> bytes:
        acc = ts.ckks_vector_from(pub_ctx, blobs[0])
        for b in blobs[1:]:
            acc += ts.ckks_vector_from(pub_ctx, b)
        return acc.serialize()

    dctx = zstandard.ZstdDecompressor()

    def zstd_only(blobs: list[bytes]) -> None:
        for b in blobs:
            for off, length in wire.parse_proto(memoryview(b)).spans:
                dctx.decompress(memoryview(b)[off + 16 : off + length])

    pool = ThreadPoolExecutor(torch.get_num_threads())

    def read_words(blobs: list[bytes]) -> None:
        # Every 8-byte word of every payload read once (numpy's sum releases the GIL), one
        # thread per core: the floor of these very bytes, where they lie, to check the floor.
        list(pool.map(lambda b: np.frombuffer(b, np.uint64, len(b) // 8).sum(), blobs))

    floor = memory_floor_gbps()
    print(
        f"preset {args.preset} (N={keys.preset.poly_degree}, primes {keys.preset.coeff_bits}, "
        f"{keys.preset.security_bits}-bit), d={args.d}, threads={torch.get_num_threads()}, "
        f"memory-read floor at the start {floor:.1f} GB/s, median of {args.repeat} interleaved "
        "rounds (% floor: of the floor measured between them)"
    )
    print(
        f"{'n':>5} {'provider':<15} {'s':>8} {'Mparam/s':>9} {'x tenseal':>9} {'GB/s':>6} "
        f"{'B/param':>8} {'% floor':>7} {'rounds':>11}"
    )
    agg = he.aggregate
    for n in args.n:
        sets = {
            "tenseal": (stock, tenseal_sum),
            "zstd-only": (stock, zstd_only),
            "bcfl-stock": (stock, lambda b: agg(b, context=pub)),
            "bcfl-stock-2p": (stock, lambda b: agg(b, context=pub, fused=False)),
            "bcfl-compact": (compact, lambda b: agg(b, context=pub)),
            "bcfl-compact-2p": (compact, lambda b: agg(b, context=pub, fused=False)),
            "bcfl-raw": (raw, lambda b: agg(b, context=pub)),
            "bcfl-paired": (paired, lambda b: agg(b, context=pub)),
            "bcfl-lean": (lean, lambda b: agg(b, context=lean_pub)),
            "bcfl-lean-2p": (lean, lambda b: agg(b, context=lean_pub, fused=False)),
            "read-lean": (lean, read_words),
        }
        if torch.cuda.is_available():  # host parse, then the Triton modular sum on the device
            sets["bcfl-compact-gpu"] = (compact, lambda b: agg(b, context=pub, backend="triton"))
        # A private copy of each cycled payload: n payloads in n places in memory, as n real
        # clients' would be, so that a sum over few distinct payloads is not served from cache.
        copies = {
            id(p): [bytes(bytearray(p[i % len(p)])) for i in range(n)] for p, _ in sets.values()
        }
        blobs = {k: copies[id(p)] for k, (p, _) in sets.items()}
        for name, (_, fn) in sets.items():
            fn(blobs[name][: min(2, n)])  # warm up: context load, thread pool, page faults
        times: dict[str, list[float]] = {k: [] for k in sets}
        # The floor is measured in every round too, between the providers: on a machine shared
        # with other work, a floor taken once at the start is not the floor the rounds saw.
        floor_buf, floors = torch.ones(FLOOR_BYTES // 8, dtype=torch.int64), []
        for _ in range(args.repeat):
            floors.append(FLOOR_BYTES / timed(lambda buf=floor_buf: buf.sum()) / 1e9)
            for name, (_, fn) in sets.items():
                times[name].append(timed(lambda fn=fn, b=blobs[name]: fn(b)))
        floor = statistics.median(floors)
        del floor_buf
        print(f"{n:>5} memory-read floor over the rounds {floor:.1f} GB/s (median)")
        base = n * args.d / statistics.median(times["tenseal"])
        for name, (payloads, _) in sets.items():
            secs = statistics.median(times[name])
            rate = n * args.d / secs
            nbytes = sum(len(b) for b in blobs[name])
            # the spread: each round's time against the floor measured in the same round
            per = [100 * nbytes / t / 1e9 / f for t, f in zip(times[name], floors, strict=True)]
            print(
                f"{n:>5} {name:<15} {secs:>8.3f} {rate / 1e6:>9.1f} {rate / base:>9.1f} "
                f"{nbytes / secs / 1e9:>6.2f} {len(payloads[0]) / args.d:>8.1f} "
                f"{100 * nbytes / secs / 1e9 / floor:>7.1f} {min(per):>5.1f}-{max(per):<5.1f}"
            )


def wire_table(clients: int, repeat: int, d: int = 8192) -> None:
    """Bytes per parameter, bits on the mean of ``clients``, encryption seconds per 1M params."""
    import tenseal as ts

    from bcfl_engine import he

    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, d) for _ in range(clients)]
    mean = np.mean(xs, axis=0)
    big = rng.uniform(-1, 1, 1 << 20)
    keys = {
        name: he.generate_keys(name) for name in ("default", "compact", "test", "threshold", "lean")
    }

    def stock(name: str):  # type: ignore[no-untyped-def]
        ctx = keys[name].secret_context
        return lambda x: ts.ckks_vector(ctx, x.tolist()).serialize()

    def ours(name: str, pair: bool | None = None):  # type: ignore[no-untyped-def]
        pub = keys[name].public_context()
        return lambda x: he.encrypt(x, pub, pair=pair)

    rows = [  # (label, preset, encrypt, time it)
        ("tenseal (default, zstd)", "default", stock("default"), True),
        ("default", "default", ours("default"), True),
        ("default paired", "default", ours("default", True), True),
        ("compact", "compact", ours("compact"), False),
        ("test", "test", ours("test"), False),
        ("threshold (stock)", "threshold", stock("threshold"), False),
        ("lean unpaired", "lean", ours("lean", False), False),
        ("lean", "lean", ours("lean"), True),
    ]
    print(
        f"{clients} clients of {d} reals in [-1, 1], each encrypted on its own; encryption: "
        f"d = 2^20, threads={torch.get_num_threads()}, median of {repeat}"
    )
    print(f"{'payload':<24} {'B/param':>8} {'x lean':>7} {'bits on mean':>12} {'enc s/1M':>9}")
    lean_bytes = keys["lean"].preset.bytes_per_parameter()
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)  # TenSEAL's C++ warns on stdout for every multi-chunk vector
    try:
        found = []
        for _, name, enc, _ in rows:
            blobs = [enc(x) for x in xs]
            agg = he.aggregate(blobs, context=keys[name].public_context())
            out = he.decrypt(agg, keys[name].secret_context) / clients
            found.append((len(blobs[0]) / d, -np.log2(np.abs(out - mean).max())))
        timing = [r for r in rows if r[3]]
        secs: dict[str, list[float]] = {r[0]: [] for r in timing}
        for r in timing:
            r[2](big)  # warm up: NTT tables, allocations
        for _ in range(repeat):  # interleaved: load from other work hits every row alike
            for label, _, enc, _ in timing:
                secs[label].append(timed(lambda e=enc: e(big)))
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)
    for (label, *_), (per, bits) in zip(rows, found, strict=True):
        enc_s = f"{statistics.median(secs[label]):>9.3f}" if label in secs else f"{'-':>9}"
        print(f"{label:<24} {per:>8.2f} {per / lean_bytes:>7.2f} {bits:>12.1f} {enc_s}")


if __name__ == "__main__":
    main()
