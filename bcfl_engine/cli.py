"""The ``bcfl`` command: ``demo``, ``audit``, ``info``, ``bench``.

Exit codes: 0 success; 1 an audit or verification found a mismatch; 2 a usage error (bad
flags or values, a rule's precondition such as ``n > 2f`` not met by the flags); 3 any other error (a missing dependency, an unreachable chain, ...). Errors
print on one line; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from collections.abc import Sequence
from typing import Any

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

    if not values:
        return [r for r in DEFAULT_RULES if _built(r)]
    out: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            info = rules.RULES.get(name)
            if info is None or info.kind != "aggregate" or not _built(name):
                known = [
                    r.name for r in rules.RULES.values() if r.kind == "aggregate" and _built(r.name)
                ]
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
    rule_names = _rules(args.rule)
    if args.secure == "ckks" and not args.rule:
        rule_names = ["mean"]
    config = DemoConfig(
        rules=rule_names,
        secure=args.secure,
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
    )
    run_demo(config, echo=print)
    return EXIT_OK


def _cmd_audit(args: argparse.Namespace) -> int:
    from .chain import Ledger
    from .round import audit
    from .store import PayloadStore

    store = PayloadStore(args.store)
    record = store.read_round(args.task, args.round)
    contract = args.contract or (record or {}).get("contract")
    if not contract:
        raise UsageError(
            f"the store has no committed record of task {args.task} round {args.round}; "
            "pass --contract ADDRESS"
        )
    ledger = Ledger.connect(args.chain, address=contract)
    report = audit(ledger, args.task, args.round, store)
    print(report.summary())
    return EXIT_OK if report.ok else EXIT_FAILED


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, rules
    from .backends import library_reasons, zstd_line

    print(f"bcfl_engine {__version__}")
    print("backends:")
    for name, reason in library_reasons().items():
        print(f"  {name:<15} {'available' if reason is None else 'unavailable: ' + reason}")
    print(zstd_line())
    print("rules (kind, kernels, what):")
    for info in rules.RULES.values():
        if not _built(info.name):
            kernels = "(not in this build)"
        else:
            kernels = ", ".join(
                k.backend + (f" ({k.needs})" if k.needs else "") for k in info.kernels
            )
        print(f"  {info.name:<18} {info.kind:<9} {kernels:<30} {info.summary}")
    return EXIT_OK


def _cmd_bench(args: argparse.Namespace) -> int:
    try:
        from .bench import run_engine_bench
    except ImportError:
        raise BcflError(
            "bcfl bench: the benchmark runner (bcfl_engine.bench) is not in this build"
        ) from None
    kw: dict[str, Any] = {"quick": args.quick, "n": args.n, "d": args.d, "backend": args.backend}
    if args.rule:
        kw["rules"] = _rules(args.rule)
    if args.device:
        kw["device"] = args.device
    run_engine_bench(**kw)
    return EXIT_OK


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bcfl",
        description="bcfl_engine: secure, robust and auditable aggregation for blockchain-based "
        "federated learning.",
        epilog="Exit codes: 0 ok, 1 audit/verification failure, 2 usage error, 3 other error.",
    )
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
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
    demo.add_argument(
        "--rule",
        action="append",
        metavar="RULE",
        help="rule(s) to compare, repeatable or comma-separated "
        f"(default: {','.join(DEFAULT_RULES)}; mean alone with --secure ckks)",
    )
    demo.add_argument(
        "--secure", choices=["ckks"], help="encrypt updates with CKKS (rule mean only)"
    )
    demo.add_argument("--clients", type=int, default=10, help="number of hospitals (default 10)")
    demo.add_argument(
        "--byzantine", type=float, default=0.2, help="fraction of Byzantine hospitals (default 0.2)"
    )
    demo.add_argument("--rounds", type=int, default=10, help="federated rounds (default 10)")
    demo.add_argument(
        "--chain", metavar="URL", help="JSON-RPC node to commit to (default: an embedded chain)"
    )
    demo.add_argument(
        "--key",
        metavar="HEX",
        default=os.environ.get("BCFL_CHAIN_KEY"),
        help="private key that sends the transactions with --chain (default: $BCFL_CHAIN_KEY)",
    )
    demo.add_argument(
        "--out", metavar="DIR", default="bcfl-demo", help="output folder (default bcfl-demo)"
    )
    demo.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    demo.add_argument(
        "--dataset", choices=["breast_cancer", "diabetes"], default="breast_cancer", help="data set"
    )
    demo.add_argument(
        "--attack",
        choices=["mix", "sign_flip", "scaled_noise", "label_flip"],
        default="mix",
        help="what Byzantine hospitals do (default mix: each a different attack)",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(fn=_cmd_demo)

    aud = sub.add_parser(
        "audit",
        parents=[common],
        help="recompute a committed round from stored payloads and check it against the chain",
        description="Reads the round's commit from the chain, recomputes the aggregate and the "
        "Merkle root from the payload store, and checks every inclusion proof with the contract. "
        "Exit 0 if everything matches, 1 naming what differs.",
    )
    aud.add_argument("--chain", metavar="URL", required=True, help="JSON-RPC node URL")
    aud.add_argument("--task", type=int, required=True, help="task id")
    aud.add_argument("--round", type=int, required=True, help="round number")
    aud.add_argument("--store", metavar="DIR", required=True, help="payload store folder")
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
    bench.add_argument("--backend", choices=["torch", "native", "triton"], help="force one backend")
    bench.add_argument("--device", help="cpu or cuda (default cpu)")
    bench.set_defaults(fn=_cmd_bench)
    return parser


def _line(exc: BaseException) -> str:
    """An error message on one line."""
    return " ".join(str(exc).split())


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bcfl``; returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)  # argparse itself exits 2 on a malformed command line
    try:
        return int(args.fn(args))
    except (UsageError, InvalidArgument, PreconditionError) as exc:
        if args.debug:
            raise
        print(f"bcfl {args.command}: error: {_line(exc)}", file=sys.stderr)
        return EXIT_USAGE
    except AuditError as exc:
        if args.debug:
            raise
        print(f"bcfl {args.command}: audit failed: {_line(exc)}", file=sys.stderr)
        return EXIT_FAILED
    except (BcflError, MissingDependency, OSError) as exc:
        if args.debug:
            raise
        print(f"bcfl {args.command}: error: {_line(exc)}", file=sys.stderr)
        return EXIT_ERROR
    except KeyboardInterrupt:
        print(f"bcfl {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # the CLI promises one line unless --debug
        if args.debug:
            raise
        print(f"bcfl {args.command}: error: {type(exc).__name__}: {_line(exc)}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())
