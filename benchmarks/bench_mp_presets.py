"""Multiparty presets side by side: bytes per parameter against bits on the mean, per smudging margin.

For each preset (default: every one in ``he.multiparty.MULTIPARTY_PRESETS``), ``--parties``
parties set up a collective key (known-answer test included), ``--clients`` clients encrypt
distinct reals in [-1, 1] (``he.encrypt``: compact or lean payloads; stock TenSEAL vectors where
the preset's scale needs two primes, as "threshold"), ``he.aggregate`` sums them and every party
adds its decryption share (guards included). Reported: the payload's bytes per real parameter,
the bits on the mean (``-log2`` of the worst coordinate's error of the decrypted sum divided by
``n``), and the preset's stated smudging margin.

    python benchmarks/bench_mp_presets.py                          # n = 1,000, 8 parties
    python benchmarks/bench_mp_presets.py --clients 50 --parties 3  # a quick look
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np

D = 8192  # one paired ciphertext at N = 8192


def measure(preset: str, clients: int, parties: int, seed: int = 0) -> dict[str, float]:
    """``{"bytes_per_param", "bits_on_mean", "seconds"}`` of one preset (see the docstring)."""
    from bcfl_engine import he
    from bcfl_engine.errors import InvalidArgument
    from bcfl_engine.he import multiparty as mp
    from bcfl_engine.he.keys import tenseal

    t0 = time.perf_counter()
    shares = [mp.KeyShare.generate(i + 1, preset) for i in range(parties)]
    public, _ = mp.local_setup(shares)
    rng = np.random.default_rng(seed)
    total, blobs = np.zeros(D), []
    for _ in range(clients):
        x = rng.uniform(-1, 1, D)
        total += x
        try:
            blobs.append(he.encrypt(x, public))
        except InvalidArgument:  # the lowest level cannot hold the scale: stock TenSEAL
            ts = tenseal()
            blobs.append(ts.ckks_vector(ts.context_from(public), x.tolist()).serialize())
    agg = he.aggregate(blobs, context=public)
    active = [s.party for s in shares]
    parts = [
        s.decryption_share(agg, contributions=blobs, active=active, min_clients=clients)
        for s in shares
    ]
    got = mp.combine_decryption(agg, parts)[:D]
    err = float(np.abs(got - total).max()) / clients
    return {
        "bytes_per_param": len(blobs[0]) / D,
        "bits_on_mean": -math.log2(err),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    from bcfl_engine.he import multiparty as mp
    from bcfl_engine.he import presets

    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--presets", nargs="+", default=list(mp.MULTIPARTY_PRESETS))
    ap.add_argument("--clients", type=int, default=1000)
    ap.add_argument("--parties", type=int, default=8)
    args = ap.parse_args()
    print(f"n = {args.clients} clients, {args.parties} parties, {D} reals in [-1, 1]")
    print(f"  {'preset':<12} {'margin':>7} {'B/param':>8} {'bits on mean':>13} {'seconds':>8}")
    for name in args.presets:
        p = presets.get(name)
        r = measure(name, args.clients, args.parties)
        print(
            f"  {name:<12} {p.smudge_margin:>5}-b {r['bytes_per_param']:>8.3f} "
            f"{r['bits_on_mean']:>13.2f} {r['seconds']:>8.0f}"
        )


if __name__ == "__main__":
    main()
