"""Robust aggregation rules, side by side in one run on the same updates.

Providers, each given the same ``[n, d]`` float32 updates and the same parameters
(:func:`bcfl_engine.bench.rule_params`: ``f = max(1, n // 10)``, Multi-Krum keeps ``n - f``,
geometric median 10 Weiszfeld steps, centered clipping 3 iterations, radii ``sqrt(d)``):

- ``bcfl[native]`` / ``bcfl[triton]``: this engine's fast path (``--backend``, default native on
  the CPU, triton on CUDA), the bare kernel on a batch already checked finite (``check=False``),
  and ``bcfl[torch]``, its pure-torch reference;
- ``public``: what a user calls on a raw tensor, ``be.aggregate(x, rule=..., backend=...)``
  (for the pre-aggregation steps clip and nnm, ``rules.<step>(x, ...)``), with its default
  finite check; on the same backend as the kernel row, so that its ``bcfl x`` is the cost of the
  public call over the kernel (1.00: the check costs no pass of its own);
- ``flower``: ``flwr.server.strategy.aggregate`` (aggregate, aggregate_median,
  aggregate_trimmed_avg, aggregate_krum with ``to_keep`` 0 / ``n - f``, aggregate_bulyan over
  Krum), on lists of ``([ndarray], num_examples)``, numpy on the host;
- ``byzfl``: ByzFL's aggregators and pre-aggregators (plain torch, on the same device);
- ``torch``: plain torch where it has the rule (``x.mean(0)``, ``torch.median(x, dim=0)``).

Reported per provider: median time, GB/s (bytes of ``x`` / time), the fraction of the
memory-read floor (torch ``x.sum()`` on the same buffer) and ``bcfl x``, the provider's time over
the engine's fast path (how many times faster the engine is). A peer that is not installed is
reported as ``missing``; a rule a peer does not have as ``n/a``; an engine rule not in this build
as ``not available``. Providers whose cost grows as ``n^2`` or ``n^3`` (all but the engine's fast
path) are first timed at n = 16 and skipped, with the estimate, when the full size would take
more than ``--budget`` seconds; a provider within budget gets as many of ``--repeats`` timed
calls as fit in it (at least one).

    python benchmarks/robust.py                      # n=64, d=1M and n=1000, d=100k
    python benchmarks/robust.py --rules mean --peers torch   # the public call against the floor
    python benchmarks/robust.py --quick --json out.json
    python benchmarks/robust.py --device cuda --backend triton   # see benchmarks/gpu.sh
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import platform
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

import bcfl_engine as be
from bcfl_engine import bench, bench_sizes
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.rules import RULES

SIZES = [(64, 1 << 20), (1000, 100_000)]
QUICK_SIZES = [(16, 4099), (31, 1000)]
PROBE_N = 16
# How a rule's cost grows with n at fixed d: pairwise distances are n^2, Bulyan's repeated
# selection n^3 (in the simplest implementations). Providers of these rules other than the
# engine's fast path are first timed at n = PROBE_N and skipped when the estimate is over budget.
RULE_EXPONENT = {"krum": 2, "multi_krum": 2, "nnm": 2, "bulyan": 3}
# Reads of x by the engine's iterative rules (one fused pass per step, plus the first).
PASSES = {"geometric_median": bench.GM_ITERS + 1, "centered_clipping": bench.CC_ITERS + 1}


@dataclass(frozen=True)
class Peer:
    """One peer's version of a rule: ``make(x, params)`` -> ``(call, setup or None)``."""

    provider: str
    make: Callable[
        [torch.Tensor, dict[str, Any]], tuple[Callable[..., Any], Callable[[], Any] | None]
    ]
    exponent: int = 1  # time grows as n**exponent at fixed d (Python loops over pairs)
    note: str = ""


def _flower() -> Any:
    return importlib.import_module("flwr.server.strategy.aggregate")


def _byzfl() -> Any:
    # ByzFL's package __init__ imports torchvision; its aggregator modules need only torch.
    if "byzfl" not in sys.modules:
        spec = importlib.util.find_spec("byzfl")
        if spec is None or not spec.submodule_search_locations:
            raise ImportError("byzfl is not installed (pip install 'bcfl_engine[bench]')")
        pkg = types.ModuleType("byzfl")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["byzfl"] = pkg
    agg = importlib.import_module("byzfl.aggregators.aggregators")
    pre = importlib.import_module("byzfl.aggregators.preaggregators")
    return types.SimpleNamespace(A=agg, P=pre)


def _results(x: torch.Tensor) -> list[tuple[list[Any], int]]:
    """Flower's input: one ``([flat ndarray], num_examples)`` per client (views, no copy)."""
    host = x.cpu().numpy()
    return [([host[i]], 1) for i in range(host.shape[0])]


def flower_peers() -> dict[str, Peer]:
    def fl(fn_name: str, exponent: int = 1, **kw: Callable[[dict[str, Any]], Any]) -> Peer:
        def make(
            x: torch.Tensor, p: dict[str, Any]
        ) -> tuple[Callable[..., Any], Callable[[], Any]]:
            fn = getattr(_flower(), fn_name)
            res = _results(x)
            args = {k: g(p) for k, g in kw.items()}
            # Bulyan pops from its list: each call gets a fresh (shallow) copy, untimed.
            return (lambda r: fn(r, **args)), (lambda: list(res))

        return Peer("flower", make, exponent, "numpy on the host")

    a = _flower  # imported lazily, inside make

    return {
        "mean": fl("aggregate"),
        "median": fl("aggregate_median"),
        "trimmed_mean": fl("aggregate_trimmed_avg", proportiontocut=lambda p: p["f"] / p["n"]),
        "krum": fl("aggregate_krum", 2, num_malicious=lambda p: p["f"], to_keep=lambda p: 0),
        "multi_krum": fl(
            "aggregate_krum", 2, num_malicious=lambda p: p["f"], to_keep=lambda p: p["m"]
        ),
        "bulyan": fl(
            "aggregate_bulyan",
            3,
            num_malicious=lambda p: p["f"],
            aggregation_rule=lambda p: a().aggregate_krum,
            to_keep=lambda p: 0,
        ),
    }


def byzfl_peers() -> dict[str, Peer]:
    def bz(
        cls: str, module: str = "A", exponent: int = 1, inplace: bool = False, **kw: Any
    ) -> Peer:
        def make(
            x: torch.Tensor, p: dict[str, Any]
        ) -> tuple[Callable[..., Any], Callable[[], Any] | None]:
            ns = _byzfl()
            obj = getattr(getattr(ns, module), cls)(**{k: g(p) for k, g in kw.items()})
            if inplace:  # Clipping overwrites its input: a fresh copy per call, untimed
                return (lambda v: obj(v)), (lambda: x.clone())
            return (lambda: obj(x)), None

        return Peer("byzfl", make, exponent)

    return {
        "mean": bz("Average"),
        "median": bz("Median"),
        "trimmed_mean": bz("TrMean", f=lambda p: p["f"]),
        "krum": bz("Krum", exponent=2, f=lambda p: p["f"]),
        "multi_krum": bz("MultiKrum", exponent=2, f=lambda p: p["f"]),
        "geometric_median": bz("GeometricMedian", nu=lambda p: p["eps"], T=lambda p: p["max_iter"]),
        "centered_clipping": bz(
            "CenteredClipping", m=lambda p: None, L=lambda p: p["n_iter"], tau=lambda p: p["tau"]
        ),
        "clip": bz("Clipping", "P", inplace=True, c=lambda p: p["max_norm"]),
        "nnm": bz("NNM", "P", exponent=2, f=lambda p: p["f"]),
    }


def torch_peers() -> dict[str, Peer]:
    return {
        "mean": Peer("torch", lambda x, p: ((lambda: x.mean(dim=0)), None)),
        "median": Peer("torch", lambda x, p: ((lambda: torch.median(x, dim=0).values), None)),
    }


PEERS: dict[str, Callable[[], dict[str, Peer]]] = {
    "flower": flower_peers,
    "byzfl": byzfl_peers,
    "torch": torch_peers,
}
PEER_CHECK: dict[str, Callable[[], Any]] = {
    "flower": _flower,
    "byzfl": _byzfl,
    "torch": lambda: torch,
}


def peer_params(rule: str, n: int, d: int) -> dict[str, Any]:
    return {**bench.rule_params(rule, n, d), "n": n}


def too_slow(
    exponent: int,
    n: int,
    probe: Callable[[torch.Tensor], float | None],
    x: torch.Tensor,
    budget_s: float,
) -> str | None:
    """Why not to run at ``n``: a call at n = PROBE_N, scaled by ``(n / PROBE_N)^exponent``,
    exceeds ``budget_s``; None to run (linear costs, small n, or a probe that failed)."""
    if exponent <= 1 or n <= PROBE_N:
        return None
    seconds = probe(x[:PROBE_N])
    if seconds is None:
        return None
    estimate = seconds * (n / PROBE_N) ** exponent
    if estimate <= budget_s:
        return None
    return f"~{estimate:.0f} s estimated from n={PROBE_N} (cost ~ n^{exponent}) > --budget {budget_s:.0f} s"


def bench_peer(
    rule: str, peer: Peer, x: torch.Tensor, floor_s: float, repeats: int, budget_s: float
) -> dict[str, Any]:
    n, d = x.shape
    sync = bench.sync_for(x.device)

    def probe(xp: torch.Tensor) -> float:
        call, setup = peer.make(xp, peer_params(rule, xp.shape[0], d))
        return bench.median(bench.time_call(call, repeats=1, setup=setup, sync=sync))

    why = too_slow(max(peer.exponent, RULE_EXPONENT.get(rule, 1)), n, probe, x, budget_s)
    if why:
        return bench.result_row(rule, peer.provider, x, floor_s, None, "skipped", why)
    call, setup = peer.make(x, peer_params(rule, n, d))
    times = bench.time_call(call, repeats=repeats, setup=setup, sync=sync, budget_s=budget_s)
    return bench.result_row(rule, peer.provider, x, floor_s, times, note=peer.note)


def bench_reference(
    rule: str, x: torch.Tensor, floor_s: float, repeats: int, budget_s: float
) -> dict[str, Any]:
    """The engine's torch reference, probed first like a peer (it is written to be obviously
    right, not fast: at n = 1000 its O(n^2)/O(n^3) rules take minutes)."""

    def probe(xp: torch.Tensor) -> float | None:
        return bench.bench_engine(rule, xp, "torch", floor_s, repeats=1)["seconds"]

    why = too_slow(RULE_EXPONENT.get(rule, 1), x.shape[0], probe, x, budget_s)
    if why:
        return bench.result_row(rule, "bcfl[torch]", x, floor_s, None, "skipped", why)
    return bench.bench_engine(rule, x, "torch", floor_s, repeats=repeats, budget_s=budget_s)


def public_call(
    rule: str, x: torch.Tensor, backend: str
) -> tuple[Callable[..., Any], Callable[[], Any] | None]:
    """``(call, setup)``: the public call on the raw tensor ``x`` (the finite check on), with
    the parameters of :func:`bcfl_engine.bench.rule_params`; clip in place on a fresh copy, as
    the kernel row runs it."""
    info = RULES[rule]
    accepted = inspect.signature(info.fn).parameters
    p = bench.rule_params(rule, x.shape[0], x.shape[1])
    params = {k: v for k, v in p.items() if k in accepted and k != "f"}
    if info.kind == "aggregate":
        return (lambda: be.aggregate(x, rule=rule, f=p["f"], backend=backend, **params)), None
    params.update({"f": p["f"]} if info.takes_f else {})
    if "inplace" in accepted:
        return (lambda v: info.fn(v, backend=backend, inplace=True, **params)), x.clone
    return (lambda: info.fn(x, backend=backend, **params)), None


def bench_public(
    rule: str, x: torch.Tensor, backend: str, floor_s: float, repeats: int, budget_s: float
) -> dict[str, Any]:
    call, setup = public_call(rule, x, backend)
    how = "be.aggregate(x)" if RULES[rule].kind == "aggregate" else f"rules.{rule}(x)"
    try:
        times = bench.time_call(
            call, repeats=repeats, setup=setup, sync=bench.sync_for(x.device), budget_s=budget_s
        )
    except Exception as exc:  # a failing call is a result of the run, not a crash
        return bench.result_row(
            rule, "public", x, floor_s, None, "error", f"{type(exc).__name__}: {exc}"
        )
    return bench.result_row(rule, "public", x, floor_s, times, note=f"{how}, {backend}, checked")


def run_size(
    n: int, d: int, rules: list[str], args: argparse.Namespace, available: dict[str, str | None]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    x = bench.make_updates(n, d, args.device, seed=n + d)
    nbytes = x.numel() * x.element_size()
    floor = bench.read_floor_s(x, args.repeats)
    info: dict[str, Any] = {
        "n": n,
        "d": d,
        "bytes": nbytes,
        "floor_s": floor,
        "floor_gbps": bench.gbps(nbytes, floor),
    }
    if x.device.type == "cuda":
        info["copy_gbps"] = bench.copy_gbps(x, args.repeats)
    rows: list[dict[str, Any]] = []
    for rule in rules:
        fast = bench.bench_engine(
            rule, x, args.backend, floor, repeats=args.repeats, budget_s=args.budget
        )
        group = [fast]
        if fast["status"] == "ok":
            used = fast["provider"][len("bcfl[") : -1]
            group.append(bench_public(rule, x, used, floor, args.repeats, args.budget))
        if fast["status"] == "ok" and not fast["provider"].endswith("[torch]"):
            group.append(bench_reference(rule, x, floor, args.repeats, args.budget))
        for name in args.peers:
            if available[name] is not None:
                group.append(
                    bench.result_row(rule, name, x, floor, None, "missing", str(available[name]))
                )
                continue
            peer = PEERS[name]().get(rule)
            if peer is None:
                group.append(bench.result_row(rule, name, x, floor, None, "n/a", "no such rule"))
                continue
            try:
                group.append(bench_peer(rule, peer, x, floor, args.repeats, args.budget))
            except Exception as exc:  # a failing peer is a result of the run, not a crash
                group.append(
                    bench.result_row(
                        rule, name, x, floor, None, "error", f"{type(exc).__name__}: {exc}"
                    )
                )
        base = fast["seconds"] if fast["status"] == "ok" else None
        if base and rule in PASSES:
            k = PASSES[rule]
            fast["note"] = f"{k} passes over x: {k * fast['floor_fraction']:.2f} of floor each"
        for r in group:
            r["bcfl_speedup"] = r["seconds"] / base if base and r["seconds"] else None
            if "copy_gbps" in info and r["gbps"] is not None:
                r["copy_fraction"] = r["gbps"] / info["copy_gbps"]
        rows += group
    return rows, info


COLUMNS = (
    *bench.ENGINE_COLUMNS[:5],
    ("bcfl_speedup", "bcfl x", ".2f"),
    *bench.ENGINE_COLUMNS[5:],
    ("note", "note", ""),
)


def print_size(rows: list[dict[str, Any]], info: dict[str, Any]) -> None:
    head = f"\n== n={info['n']} d={info['d']} float32 ({info['bytes'] / 1e6:.0f} MB): memory-read floor "
    head += f"{info['floor_s'] * 1e3:.2f} ms = {info['floor_gbps']:.2f} GB/s"
    if "copy_gbps" in info:
        head += f"; device copy {info['copy_gbps']:.1f} GB/s"
    print(head)
    cols = list(COLUMNS)
    if "copy_gbps" in info:
        cols.insert(5, ("copy_fraction", "of copy", ".2f"))
    shown = [{**r, "note": r["note"][:90]} for r in bench.as_ms(rows)]
    print(bench.format_table(shown, cols))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--sizes",
        type=bench_sizes.parse_sizes,
        help="NxD[,NxD...] (default 64x1048576,1000x100000)",
    )
    ap.add_argument("--rules", help="comma-separated rules (default: all)")
    ap.add_argument("--peers", default="flower,byzfl,torch", help="comma-separated peers")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls per provider (median)")
    ap.add_argument("--budget", type=float, default=60.0, help="seconds one provider may take")
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--backend", default=None, help="engine fast path (default: automatic)")
    ap.add_argument("--quick", action="store_true", help=f"tiny sizes {QUICK_SIZES}, 2 repeats")
    ap.add_argument("--json", metavar="OUT", help="write every row and the machine to OUT")
    args = ap.parse_args(argv)
    sizes = args.sizes or (QUICK_SIZES if args.quick else SIZES)
    if args.quick:
        args.repeats = min(args.repeats, 2)
    rules = [r.strip() for r in args.rules.split(",")] if args.rules else list(RULES)
    unknown = [r for r in rules if r not in RULES]
    args.peers = [p.strip() for p in args.peers.split(",") if p.strip()]
    bad_peers = [p for p in args.peers if p not in PEERS]
    if unknown or bad_peers:
        ap.error(
            f"unknown rules {unknown} or peers {bad_peers}; rules: {list(RULES)}, peers: {list(PEERS)}"
        )
    for n, d in sizes:  # every size checked before the first is allocated
        try:
            bench_sizes.check_size(n, d, args.device)
        except InvalidArgument as exc:
            ap.error(str(exc))
    available: dict[str, str | None] = {}
    for name in args.peers:
        try:
            PEER_CHECK[name]()
            available[name] = None
        except ImportError as exc:
            available[name] = f"not installed ({exc})"
    all_rows, infos = [], []
    for n, d in sizes:
        rows, info = run_size(n, d, rules, args, available)
        print_size(rows, info)
        all_rows += rows
        infos.append(info)
    if args.json:
        machine = {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name() if args.device.startswith("cuda") else None,
        }
        with open(args.json, "w", encoding="utf-8") as fh:
            doc = {"machine": machine, "sizes": infos, "rows": all_rows}
            json.dump(_finite(doc), fh, indent=1, allow_nan=False)
    return 0


def _finite(value: Any) -> Any:
    """``value`` with non-finite floats as None (strict JSON has no Infinity)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_finite(v) for v in value]
    return value


if __name__ == "__main__":
    sys.exit(main())
