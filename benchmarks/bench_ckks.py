"""CKKS secure aggregation, side by side in one run on the same payloads.

Providers, each summing the same ``n`` clients' encryptions of ``d`` reals (default preset):

- ``tenseal``: the reference (NVIDIA FLARE's path): ``acc += ts.ckks_vector_from(ctx, blob)``
  over stock ``CKKSVector.serialize()`` payloads (zstd), then ``acc.serialize()``;
- ``bcfl-stock``: :func:`bcfl_engine.he.aggregate` on the same stock payloads;
- ``bcfl-compact`` / ``bcfl-paired``: on compact payloads (lowest level, bit-packed; paired:
  two reals per complex slot).

Reported: seconds, parameters summed per second and the ratio to TenSEAL's (on the same
parameters), payload GB/s, bytes per parameter on the wire, and the machine's memory-read floor
(GB/s of a multi-threaded int64 sum over a buffer larger than the caches) as the ceiling of a
memory-bound sum. Encrypting n x 262144 reals takes ~1 s per client, so ``--distinct`` clients
are encrypted and their payloads cycled to ``n`` (every provider parses every payload anyway).

    python benchmarks/bench_ckks.py            # n = 32 and 256, d = 262144
    python benchmarks/bench_ckks.py --quick    # n = 4, d = 8192: a smoke run
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch


def memory_floor_gbps(nbytes: int = 512 << 20) -> float:
    x = torch.ones(nbytes // 8, dtype=torch.int64)
    x.sum()
    best = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        x.sum()
        best = min(best, time.perf_counter() - t)
    return nbytes / best / 1e9


def best_of(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    best = float("inf")
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


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
    ap.add_argument("--repeat", type=int, default=2)
    args = ap.parse_args()
    if args.quick:
        args.n, args.d, args.distinct, args.repeat = [4], 8192, 2, 1

    import tenseal as ts

    from bcfl_engine import he

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
    paired = [he.encrypt(x, pub, pair=True) for x in xs]

    def tenseal_sum(blobs: list[bytes]) -> bytes:
        acc = ts.ckks_vector_from(pub_ctx, blobs[0])
        for b in blobs[1:]:
            acc += ts.ckks_vector_from(pub_ctx, b)
        return acc.serialize()

    floor = memory_floor_gbps()
    print(
        f"preset {args.preset} (N={keys.preset.poly_degree}, primes {keys.preset.coeff_bits}, "
        f"{keys.preset.security_bits}-bit), d={args.d}, threads={torch.get_num_threads()}, "
        f"memory-read floor {floor:.1f} GB/s"
    )
    print(
        f"{'n':>5} {'provider':<14} {'s':>8} {'Mparam/s':>9} {'x tenseal':>9} {'GB/s':>6} {'B/param':>8} {'% floor':>7}"
    )
    for n in args.n:
        sets = {
            "tenseal": (stock, lambda b: tenseal_sum(b)),
            "bcfl-stock": (stock, lambda b: he.aggregate(b, context=pub)),
            "bcfl-compact": (compact, lambda b: he.aggregate(b, context=pub)),
            "bcfl-paired": (paired, lambda b: he.aggregate(b, context=pub)),
        }
        base = None
        for name, (payloads, fn) in sets.items():
            blobs = [payloads[i % len(payloads)] for i in range(n)]
            fn(blobs[: min(2, n)])  # warm up: context load, thread pool, page faults
            secs = best_of(lambda fn=fn, blobs=blobs: fn(blobs), args.repeat)
            rate = n * args.d / secs
            base = base or rate
            nbytes = sum(len(b) for b in blobs)
            print(
                f"{n:>5} {name:<14} {secs:>8.3f} {rate / 1e6:>9.1f} {rate / base:>9.1f} "
                f"{nbytes / secs / 1e9:>6.2f} {len(payloads[0]) / args.d:>8.1f} "
                f"{100 * nbytes / secs / 1e9 / floor:>7.1f}"
            )


if __name__ == "__main__":
    main()
