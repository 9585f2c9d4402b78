"""The ``bcfl`` command: ``demo``, ``audit``, ``info``, ``bench``.

Exit codes: 0 success; 1 an audit or verification found a mismatch; 2 a usage error (bad
flags or values, a rule's precondition such as ``n > 2f`` not met by the flags, checked
before any work); 3 any other error (a missing dependency, an unreachable chain, ...); 130
interrupted. Errors print on one line; ``--debug`` prints the traceback first and keeps the
exit code.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import traceback
from collections.abc import Sequence
from typing import Any

from .cli_demo import add_demo_arguments
from .errors import AuditError, BcflError, InvalidArgument, MissingDependency, PreconditionError

EXIT_OK, EXIT_FAILED, EXIT_USAGE, EXIT_ERROR = 0, 1, 2, 3
DEFAULT_RULES = ("mean", "median", "trimmed_mean", "krum", "geometric_median")


class UsageError(Exception):
    """A flag's value is wrong (exit code 2)."""


def _built(rule: str) -> bool:
    """Whether the module of ``rule`` is in this installation."""
    return importlib.util.find_spec(f"bcfl_engine.rules.{rule}") is not None


def _rules(values: Sequence[str] | None) -> list[str]:
    from . import rules

    if values is None:
        return [r for r in DEFAULT_RULES if _built(r)]
    known = [r.name for r in rules.RULES.values() if r.kind == "aggregate" and _built(r.name)]
    out: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                raise UsageError(
                    f"--rule: empty rule name in {value!r}; name rules, comma-separated, "
                    f"from: {', '.join(known)}"
                )
            info = rules.RULES.get(name)
            if info is None or info.kind != "aggregate" or not _built(name):
                why = (
                    "is not in this build"
                    if info is not None and info.kind == "aggregate"
                    else "is unknown"
                )
                raise UsageError(f"--rule: {name!r} {why}; available: {', '.join(known)}")
            if name not in out:
                out.append(name)
    return out


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo.run import DemoConfig, run_demo

    if not 0 <= args.byzantine < 0.5:
        raise UsageError(f"--byzantine must be a fraction in [0, 0.5); got {args.byzantine}")
    if args.clients < 3:
        raise UsageError(f"--clients must be >= 3; got {args.clients}")
    if args.rounds < 1:
        raise UsageError(f"--rounds must be >= 1; got {args.rounds}")
    if args.threshold is not None:
        if args.secure != "ckks":
            raise UsageError("--threshold sets the multiparty CKKS key: it needs --secure ckks")
        if not 2 <= args.threshold <= args.clients:
            raise UsageError(
                f"--threshold must be in [2, --clients={args.clients}]; got {args.threshold}"
            )
    _check_quorum_args(args)
    rule_names = _rules(args.rule)
    if args.dp_noise is None and (args.dp_clip is not None or args.dp_budget is not None):
        raise UsageError("--dp-clip and --dp-budget go with --dp-noise Z")
    if args.dp_noise is not None:
        from .demo.private import mechanism

        mechanism(args.dp_noise, args.dp_clip, args.dp_budget, args.clients)  # values checked
    if args.secure == "ckks" and not args.rule:
        rule_names = ["mean"]
    config = DemoConfig(
        rules=rule_names,
        secure=args.secure,
        threshold=args.threshold,
        clients=args.clients,
        byzantine=args.byzantine,
        rounds=args.rounds,
        chain=args.chain,
        key=args.key,
        out=args.out,
        seed=args.seed,
        dataset=args.dataset,
        attack=args.attack,
        progress=not args.quiet,
        dp_noise=args.dp_noise,
        dp_clip=args.dp_clip,
        dp_budget=args.dp_budget,
        aggregators=args.aggregators,
        quorum=args.quorum,
        dishonest_aggregator=args.dishonest_aggregator,
    )
    run_demo(config, echo=print)
    return EXIT_OK


def _check_quorum_args(args: argparse.Namespace) -> None:
    from .chain.quorum import MAX_AGGREGATORS

    m = args.aggregators
    if not 1 <= m <= MAX_AGGREGATORS:
        raise UsageError(f"--aggregators must be in [1, {MAX_AGGREGATORS}]; got {m}")
    if args.quorum is not None and (m < 2 or not 1 <= args.quorum <= m):
        raise UsageError(f"--quorum must be in [1, --aggregators={m}] with --aggregators >= 2")
    if args.dishonest_aggregator and m < 2:
        raise UsageError("--dishonest-aggregator needs --aggregators >= 2")
    if m > 1 and (args.chain or args.secure):
        raise UsageError("--aggregators > 1 runs on the embedded chain in plaintext")


def _address_or_none(value: object) -> str | None:
    """``value`` if it is a 20-byte hex address, else None (the caller falls back)."""
    from .chain.merkle import address_bytes

    try:
        return "0x" + address_bytes(value, "contract").hex()  # type: ignore[arg-type]
    except (InvalidArgument, TypeError, ValueError):
        return None


def _cmd_audit(args: argparse.Namespace) -> int:
    from .chain import Ledger
    from .chain.embedded import is_journal
    from .round import audit
    from .store import PayloadStore

    url = "://" in args.chain
    if not url and not is_journal(args.chain):
        raise UsageError(
            f"--chain {args.chain!r} is neither a node URL (http://HOST:PORT) nor a chain folder "
            "that bcfl demo wrote (DIR/chain, holding chain.json)"
        )
    # Read-only: an audit creates, repairs and deletes nothing in the aggregator's store. A
    # malformed round record is the audit's finding (exit 1), not a reason to stop here.
    stores = [PayloadStore(s, readonly=True) for s in args.store]
    record = stores[0].read_round(args.task, args.round, problems=[]) or {}
    contract = args.contract or _address_or_none(record.get("contract"))
    if url and not contract:
        raise UsageError(
            f"the store has no committed record of task {args.task} round {args.round}; "
            "pass --contract ADDRESS"
        )
    if url:
        ledger = Ledger.connect(args.chain, address=contract)
    else:
        ledger = Ledger.replay(args.chain, address=contract)
    # Several stores: the ingest nodes of one round (bcfl_engine.round_nodes), read as one.
    report = audit(ledger, args.task, args.round, stores if len(stores) > 1 else stores[0])
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, rules
    from .backends import library_reasons, zstd_line
    from .chain.signing import signatures_line

    print(f"bcfl_engine {__version__}")
    print("backends:")
    for name, reason in library_reasons().items():
        print(f"  {name:<15} {'available' if reason is None else 'unavailable: ' + reason}")
    print(zstd_line())
    print(signatures_line())
    print("rules (kind, kernels, what):")
    for info in rules.RULES.values():
        if not _built(info.name):
            kernels = "(not in this build)"
        else:
            kernels = ", ".join(
                k.backend + (f" ({k.needs})" if k.needs else "") for k in info.kernels
            )
        print(f"  {info.name:<18} {info.kind:<9} {kernels:<30} {info.summary}")
    from .he.presets import DEFAULT, table

    print(
        f"CKKS presets (he.generate_keys(name), {DEFAULT!r} when unnamed; precision: the error "
        "on the mean of 1,000 clients):"
    )
    print("\n".join(table()))
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import FULL_SIZE, QUICK_SIZE, run_engine_bench
        from .bench_sizes import check_size, parse_sizes
    except ImportError:
        raise BcflError(
            "bcfl bench: the benchmark runner (bcfl_engine.bench) is not in this build"
        ) from None
    if args.sizes is not None and (args.n is not None or args.d is not None):
        raise UsageError("--sizes replaces --n and --d: give one or the other")
    sizes = [(args.n, args.d)] if args.sizes is None else parse_sizes(args.sizes)
    if args.ranks is not None:
        return _bench_ranks(args, sizes)
    kw: dict[str, Any] = {"quick": args.quick, "backend": args.backend}
    if args.rule is not None:
        kw["rules"] = _rules(args.rule)
    if args.device:
        kw["device"] = args.device
    n0, d0 = QUICK_SIZE if args.quick else FULL_SIZE
    sizes = [(n0 if n is None else n, d0 if d is None else d) for n, d in sizes]
    for n, d in sizes:  # every size checked before the first is allocated
        check_size(n, d, kw.get("device", "cpu"))
    for n, d in sizes:
        run_engine_bench(n=n, d=d, **kw)
    return EXIT_OK


def _bench_ranks(args: argparse.Namespace, sizes: Sequence[tuple[Any, Any]]) -> int:
    from . import bench_ranks

    if not 2 <= args.ranks <= 64:
        raise UsageError(f"--ranks must be in [2, 64]; got {args.ranks}")
    if args.device or args.backend:
        raise UsageError("--ranks runs on CPU processes with the automatic backend")
    rules = _rules(args.rule) if args.rule else list(bench_ranks.DEFAULT_RULES)
    same = True
    for n, d in sizes:
        n, d = n or (64 if args.quick else 200), d or (65_536 if args.quick else 200_000)
        same = bench_ranks.run(args.ranks, n, d, rules) and same
    return EXIT_OK if same else EXIT_FAILED


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="bcfl",
        description="bcfl_engine: secure, robust and auditable aggregation for blockchain-based "
        "federated learning.",
        epilog="Exit codes: 0 ok, 1 audit/verification failure, 2 usage error, 3 other error.",
    )
    parser.add_argument(
        "--debug", action="store_true", help="show tracebacks on errors (same exit codes)"
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--debug", action="store_true", default=argparse.SUPPRESS, help=argparse.SUPPRESS
    )

    demo = sub.add_parser(
        "demo",
        parents=[common],
        help="simulate hospitals on real medical data, some Byzantine, and compare rules",
        description="Federated training on a scikit-learn medical data set split non-IID across "
        "hospitals, a share of them Byzantine; every round goes through AggregationRound and is "
        "committed to a chain. Prints a table per round, writes summary.json and accuracy.png.",
    )
    add_demo_arguments(demo, DEFAULT_RULES)
    demo.set_defaults(fn=_cmd_demo)

    aud = sub.add_parser(
        "audit",
        parents=[common],
        help="recompute a committed round from stored payloads and check it against the chain",
        description="Reads the round's commit from the chain, recomputes the aggregate and the "
        "Merkle root from the payload store, and checks every inclusion proof with the contract. "
        "Exit 0 if everything matches, 1 naming what differs.",
    )
    aud.add_argument(
        "--chain",
        metavar="URL|DIR",
        required=True,
        help="JSON-RPC node URL, or the chain folder of a demo on the embedded chain "
        "(bcfl-demo/chain: its transactions are replayed into a fresh embedded chain)",
    )
    aud.add_argument("--task", type=int, required=True, help="task id")
    aud.add_argument("--round", type=int, required=True, help="round number")
    aud.add_argument(
        "--store",
        metavar="DIR",
        required=True,
        action="append",
        help="payload store folder; repeat it for a round over several ingest nodes (each "
        "node's store, in any order)",
    )
    aud.add_argument(
        "--contract", metavar="ADDRESS", help="registry address (default: from the store)"
    )
    aud.set_defaults(fn=_cmd_audit)

    info = sub.add_parser(
        "info", parents=[common], help="backends available here and the kernels of each rule"
    )
    info.set_defaults(fn=_cmd_info)

    bench = sub.add_parser(
        "bench", parents=[common], help="time the engine's rules on this machine"
    )
    bench.add_argument("--quick", action="store_true", help="small sizes, a few seconds")
    bench.add_argument(
        "--rule", action="append", metavar="RULE", help="rule(s) to time (default: all)"
    )
    bench.add_argument("--n", type=int, help="number of client updates")
    bench.add_argument("--d", type=int, help="length of one update")
    bench.add_argument(
        "--sizes", metavar="NxD[,NxD...]", help="several sizes, one table each (instead of --n --d)"
    )
    bench.add_argument("--backend", choices=["torch", "native", "triton"], help="force one backend")
    bench.add_argument("--device", help="cpu or cuda (default cpu)")
    bench.add_argument(
        "--ranks",
        type=int,
        metavar="N",
        help="time the rules on N processes (torch.distributed, gloo, this machine), each "
        "checked bit for bit against one process",
    )
    bench.set_defaults(fn=_cmd_bench)
    return parser


def _line(exc: BaseException) -> str:
    """An error message on one line."""
    return " ".join(str(exc).split())


def _failure(exc: BaseException) -> tuple[int, str]:
    """The exit code of ``exc`` and the line that reports it."""
    if isinstance(exc, UsageError | InvalidArgument | PreconditionError):
        return EXIT_USAGE, f"error: {_line(exc)}"
    if isinstance(exc, AuditError):
        return EXIT_FAILED, f"audit failed: {_line(exc)}"
    if isinstance(exc, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(exc, BcflError | MissingDependency | OSError):
        return EXIT_ERROR, f"error: {_line(exc)}"
    return EXIT_ERROR, f"error: {type(exc).__name__}: {_line(exc)}"


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bcfl``; returns the exit code.

    One line on stderr for an error; with ``--debug`` the traceback first. The exit code is
    the same with or without ``--debug``.
    """
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a malformed command line
    try:
        code = int(args.fn(args))
        sys.stdout.flush()  # a closed pipe shows here, not at exit
        return code
    except BrokenPipeError:  # the reader went away (``bcfl info | head``): not an error
        # Later writes to the closed pipe, at exit included, go nowhere.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK
    except (Exception, KeyboardInterrupt) as exc:  # the CLI promises one line and a code
        code, message = _failure(exc)
        if args.debug:
            traceback.print_exc()
        print(f"bcfl {args.command}: {message}", file=sys.stderr)
        return code


if __name__ == "__main__":
    sys.exit(main())
