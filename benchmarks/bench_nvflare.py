"""NVIDIA FLARE's HE aggregator against the engine's drop-in, on the same messages, in one run.

Each client message is what NVFlare's ``HEModelEncryptor`` sends: a WEIGHTS DXO of ``d``
parameters in 10 layers, one ``tenseal.ckks_vector`` each under HEBuilder's default context
(CKKS, N=8192, primes [60, 40, 40], scale 2^40), serialized by FOBS (``fobs.dumps``: each
layer travels as its vector bytes and the whole public context). The server path is timed from
the message bytes: ``fobs.loads`` + ``accept`` per message, then ``aggregate``.

- ``nvflare``: ``nvflare.app_opt.he.intime_accumulate_model_aggregator
  .HEInTimeAccumulateWeightedAggregator``, with NVFlare's ``CKKSVectorDecomposer`` registered
  in FOBS (what a stock server has: a context and a vector rebuilt per layer per message);
- ``bcfl``: ``bcfl_engine.integrations.nvflare.HEInTimeAccumulateWeightedAggregator``, with
  ``CKKSWireDecomposer`` registered (layers kept as bytes, summed as they are accepted).

The two outputs are checked byte for byte (every layer's ``serialize()``) before any timing
is reported. Reported per (n, d): the whole server path and the round-close latency (the last
message's ``loads`` + ``accept``, then ``aggregate``: what the server spends after the last
reply arrives), medians over ``--repeat`` rounds, providers interleaved, and NVFlare / bcfl.
Encrypting 262,144 reals takes ~1 s per client, so ``--distinct`` clients are encrypted and
their messages cycled to ``n`` under distinct site names (every message is its own bytes).

    python benchmarks/bench_nvflare.py                   # n = 8, 32; d = 262144, 1048576
    python benchmarks/bench_nvflare.py --n 8 --d 65536   # a smoke run
"""

from __future__ import annotations

import argparse
import itertools
import os
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

LAYERS = 10


def quiet(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with stdout closed: TenSEAL's C++ warns there for every multi-chunk vector."""
    saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 1)
    try:
        return fn()
    finally:
        os.dup2(saved, 1)
        os.close(null)
        os.close(saved)


def use_decomposer(cls: type) -> None:
    """FOBS with ``cls`` for ``CKKSVector`` and NVFlare's own decomposers, in a fresh process
    (FOBS keeps the first decomposer registered for a type, for the life of the process)."""
    from nvflare.fuel.utils import fobs
    from nvflare.private.fed.utils.fed_utils import nvflare_fobs_initialize

    fobs.register(cls)
    nvflare_fobs_initialize()


def he_context() -> Any:
    """HEBuilder's default client context (secret key; symmetric encryption, relin keys)."""
    import tenseal as ts

    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=8192,
        coeff_mod_bit_sizes=[60, 40, 40],
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.generate_relin_keys()
    ctx.global_scale = 2**40
    return ctx


def client_params(ctx: Any, d: int, seed: int) -> dict[str, Any]:
    """``d`` reals in ``LAYERS`` layers, each one ``ckks_vector`` (HEModelEncryptor's shape)."""
    import tenseal as ts

    rng = np.random.default_rng(seed)
    cuts = np.linspace(0, d, LAYERS + 1).astype(int)
    return {
        f"layer{i}.weight": ts.ckks_vector(ctx, rng.uniform(-1, 1, hi - lo).tolist())
        for i, (lo, hi) in enumerate(itertools.pairwise(cuts))
    }


def message(params: dict[str, Any], site: str, round_: int, steps: int = 1) -> bytes:
    """A client's reply as FOBS bytes: WEIGHTS DXO, CKKS meta, site name, round cookie."""
    from nvflare.apis.dxo import DXO, DataKind, MetaKey
    from nvflare.apis.fl_constant import ReservedKey
    from nvflare.app_common.app_constant import AppConstants
    from nvflare.fuel.utils import fobs

    meta = {MetaKey.PROCESSED_ALGORITHM: "CKKS", MetaKey.NUM_STEPS_CURRENT_ROUND: steps}
    shareable = DXO(DataKind.WEIGHTS, params, meta=meta).to_shareable()
    shareable.set_peer_props({ReservedKey.IDENTITY_NAME: site})
    shareable.add_cookie(AppConstants.CONTRIBUTION_ROUND, round_)
    return fobs.dumps(shareable)  # type: ignore[no-any-return]


def server_context(round_: int) -> Any:
    from nvflare.apis.fl_context import FLContextManager
    from nvflare.app_common.app_constant import AppConstants

    mgr = FLContextManager(engine=None, identity_name="server", job_id="bench")
    fl_ctx = mgr.new_context()
    fl_ctx.set_prop(AppConstants.CURRENT_ROUND, round_, private=True, sticky=True)
    return fl_ctx


def server_round(cls: type, messages: list[bytes], **kwargs: Any) -> tuple[dict, float, float]:
    """One round on the server: ``fobs.loads`` + ``accept`` each message, then ``aggregate``.
    Returns (the aggregate's layers, whole seconds, round-close seconds)."""
    from nvflare.apis.dxo import DataKind, from_shareable
    from nvflare.apis.event_type import EventType
    from nvflare.fuel.utils import fobs

    fl_ctx = server_context(0)
    agg = cls(expected_data_kind=DataKind.WEIGHTS, **kwargs)
    agg.handle_event(EventType.START_RUN, fl_ctx)
    last = 0.0
    t0 = time.perf_counter()
    for m in messages:
        t = time.perf_counter()
        if not agg.accept(fobs.loads(m), fl_ctx):
            raise RuntimeError(f"{cls.__module__} rejected a message")
        last = time.perf_counter() - t
    t = time.perf_counter()
    out = agg.aggregate(fl_ctx)
    end = time.perf_counter()
    return from_shareable(out).data, end - t0, last + end - t


def child(provider: str, path: str, n: int, repeat: int) -> None:
    """One provider in its own process: build the ``n`` messages from the saved vectors, run
    a warm-up round on 2 of them, then ``repeat`` rounds, print times and a digest of every output layer as JSON."""
    import hashlib
    import json
    import logging
    import pickle

    import tenseal as ts

    if provider == "nvflare":
        from nvflare.app_opt.he.decomposers import CKKSVectorDecomposer as decomposer
        from nvflare.app_opt.he.intime_accumulate_model_aggregator import (
            HEInTimeAccumulateWeightedAggregator as cls,
        )
    else:
        from bcfl_engine.integrations.nvflare import HEInTimeAccumulateWeightedAggregator as cls
        from bcfl_engine.integrations.nvflare_wire import CKKSWireDecomposer as decomposer

    logging.disable(logging.CRITICAL)  # NVFlare warns for every site without a weight
    use_decomposer(decomposer)
    with open(path, "rb") as f:
        context, clients = pickle.load(f)
    ctx = ts.context_from(context)
    params = [{k: ts.ckks_vector_from(ctx, v) for k, v in c.items()} for c in clients]
    messages = [message(params[i % len(params)], f"site-{i}", 0) for i in range(n)]
    server_round(cls, messages[:2])  # warm-up: first calls into TenSEAL, torch, the extension
    times = []
    for _ in range(repeat):
        out, whole, close = server_round(cls, messages)
        times.append((whole, close))
    digests = {k: hashlib.sha256(v.serialize()).hexdigest() for k, v in out.items()}
    print(json.dumps({"times": times, "digests": digests}))


def run_child(provider: str, path: str, n: int, repeat: int) -> dict:
    import json
    import subprocess
    import sys

    cmd = [sys.executable, __file__, "--child", provider, path, str(n), str(repeat)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode:
        raise SystemExit(f"{provider} n={n}: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def main() -> None:
    import sys

    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]))
        return
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--n", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--d", type=int, nargs="+", default=[262144, 1048576])
    ap.add_argument("--distinct", type=int, default=2, help="clients encrypted, cycled to n")
    ap.add_argument("--repeat", type=int, default=1, help="rounds per provider (median)")
    args = ap.parse_args()

    import pickle
    import tempfile

    ctx = he_context()
    print(
        f"HEBuilder context (N=8192, [60, 40, 40], 2^40), {LAYERS} layers, "
        f"threads={torch.get_num_threads()}, median of {args.repeat} round(s), "
        "each provider in its own process"
    )
    print(
        f"{'n':>4} {'d':>9} {'provider':<8} {'whole s':>8} {'close s':>8} {'x whole':>8} {'x close':>8}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for d in args.d:
            clients = [
                quiet(lambda s=s, d=d: client_params(ctx, d, s)) for s in range(args.distinct)
            ]
            path = os.path.join(tmp, f"clients-{d}.pkl")
            with open(path, "wb") as f:
                saved = [{k: v.serialize() for k, v in c.items()} for c in clients]
                pickle.dump((ctx.serialize(save_secret_key=False), saved), f)
            for n in args.n:
                res = {p: run_child(p, path, n, args.repeat) for p in ("nvflare", "bcfl")}
                if res["nvflare"]["digests"] != res["bcfl"]["digests"]:
                    raise SystemExit(f"n={n}, d={d}: the aggregates differ")
                med = {
                    p: [statistics.median(t[i] for t in r["times"]) for i in (0, 1)]
                    for p, r in res.items()
                }
                for p, (whole, close) in med.items():
                    ref_whole, ref_close = med["nvflare"]
                    print(
                        f"{n:>4} {d:>9} {p:<8} {whole:>8.3f} {close:>8.3f} "
                        f"{ref_whole / whole:>8.2f} {ref_close / close:>8.2f}",
                        flush=True,
                    )
    print("aggregates byte-identical to NVFlare's for every (n, d)")


if __name__ == "__main__":
    main()
