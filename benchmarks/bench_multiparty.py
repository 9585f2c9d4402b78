"""Multiparty CKKS keys (``he.multiparty``, preset "threshold"), side by side in one run.

1. Decryption of one aggregate of ``d`` reals (``n`` clients' stock TenSEAL vectors summed by
   ``he.aggregate``):
   - ``tenseal-decrypt``: TenSEAL decrypting a vector of the same size and parameters with a
     whole secret key (what a single key holder does today);
   - ``party-share``: one party's :meth:`KeyShare.decryption_share`, guards included (parsing
     the aggregate and the ``n`` contributions, checking ``c1``), and ``party-share-compute``:
     the share's arithmetic alone (``c1 s_i`` and the smudging noise's NTT), the part a faster
     kernel speeds up;
   - ``combine``: :func:`combine_decryption` of the shares of ``parties`` parties (decoding
     included).
2. Public-key setup for ``--setup-parties`` parties: one party's public share and commitment
   (the parties compute theirs in parallel), then checking and combining every reveal into the
   context bytes and loading them (``ts.context_from``).

Times are medians over ``--repeat`` rounds; ratios are against ``tenseal-decrypt``.

    python benchmarks/bench_multiparty.py            # d = 1,000,000, n = 2, 100-party setup
    python benchmarks/bench_multiparty.py --quick    # d = 65,536: a smoke run
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np


def median_time(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=1_000_000)
    ap.add_argument("--clients", type=int, default=2)
    ap.add_argument("--parties", type=int, default=5)
    ap.add_argument("--setup-parties", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.d, args.setup_parties, args.repeat = 65_536, 20, 2

    import tenseal as ts

    from bcfl_engine import he
    from bcfl_engine.he import mpcontext, mpformat
    from bcfl_engine.he import multiparty as mp

    prm = mp.params()
    crs = mp.new_crs()
    parties = [mp.KeyShare.generate(party=i + 1) for i in range(args.parties)]
    commits = [p.commitment(crs) for p in parties]
    public = mp.combine_public([p.public_share(crs) for p in parties], crs, commitments=commits)
    ctx = ts.context_from(public)
    rng = np.random.default_rng(0)
    xs = [rng.uniform(-1, 1, args.d) for _ in range(args.clients)]
    payloads = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    agg = he.aggregate(payloads, context=public)
    active = [p.party for p in parties]

    secret = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60, 60])
    secret.global_scale = 2.0**80
    whole = ts.ckks_vector(secret, xs[0].tolist()).serialize()
    rows: dict[str, float] = {}
    rows["tenseal-decrypt"] = median_time(
        lambda: ts.ckks_vector_from(secret, whole).decrypt(), args.repeat
    )
    p0 = parties[0]
    rows["party-share"] = median_time(
        lambda: p0.decryption_share(agg, contributions=payloads, active=active), args.repeat
    )
    layout, res, _ = mpcontext._residues(agg, prm.info, "agg")
    digest = mp.c1_digest(res[:, 1], layout.parms_id)
    rows["party-share-compute"] = median_time(
        lambda: p0._share(res, layout.primes, digest, tuple(active)), args.repeat
    )
    shares = [p.decryption_share(agg, contributions=payloads, active=active) for p in parties]
    got = mp.combine_decryption(agg, shares)
    err = float(np.abs(got - np.sum(xs, axis=0)).max())
    rows["combine"] = median_time(lambda: mp.combine_decryption(agg, shares), args.repeat)

    base = rows["tenseal-decrypt"]
    print(
        f"decryption of d={args.d:,} reals ({layout.ciphertexts} ciphertexts), "
        f"{args.clients} clients, {args.parties} parties; max error {err:.2e}"
    )
    for name, t in rows.items():
        print(f"  {name:22s} {t:8.3f} s   x{t / base:6.2f} of tenseal-decrypt")

    many = [mp.KeyShare.generate(party=i + 1) for i in range(args.setup_parties)]
    one = many[0]
    per_party = median_time(lambda: (one.commitment(crs), one.public_share(crs)), args.repeat)
    reveals = [p.public_share(crs) for p in many]
    cs = [mpformat.commitment(r) for r in reveals]
    combine = median_time(
        lambda: ts.context_from(mp.combine_public(reveals, crs, commitments=cs)), args.repeat
    )
    print(f"public-key setup, {args.setup_parties} parties:")
    print(f"  one party's share+commitment {per_party:8.3f} s")
    print(f"  check+combine+load all       {combine:8.3f} s")
    print(f"  critical path                {per_party + combine:8.3f} s")


if __name__ == "__main__":
    main()
