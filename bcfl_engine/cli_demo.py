"""The flags of ``bcfl demo``: what the demo takes, defined apart from the command's dispatch.

:func:`add_demo_arguments` fills the ``demo`` subparser of :func:`bcfl_engine.cli.build_parser`;
the checks of the values, which need the rules and the chain, run in ``bcfl_engine.cli``.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence


def add_demo_arguments(demo: argparse.ArgumentParser, default_rules: Sequence[str]) -> None:
    """Adds every flag of ``bcfl demo`` to ``demo`` (``default_rules``: the rules compared
    without ``--rule``)."""
    demo.add_argument(
        "--rule",
        action="append",
        metavar="RULE",
        help="rule(s) to compare, repeatable or comma-separated "
        f"(default: {','.join(default_rules)}; mean alone with --secure ckks, where a robust "
        "rule runs on the decrypted means of buckets of hospitals)",
    )
    demo.add_argument(
        "--secure",
        choices=["ckks"],
        help="also run each rule on CKKS-encrypted updates under a multiparty key the hospitals "
        "hold (the aggregator holds none): FedAvg decrypts the sum, a robust rule the sums of "
        "buckets drawn from the chain",
    )
    demo.add_argument(
        "--threshold",
        type=int,
        metavar="T",
        help="with --secure ckks: any T hospitals decrypt an aggregate together (t-of-n; "
        "default: all of them)",
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
    demo.add_argument(
        "--dp-noise",
        type=float,
        metavar="Z",
        help="add a FedAvg line with central differential privacy, noise multiplier Z "
        "(noise std Z * C / hospitals per coordinate)",
    )
    demo.add_argument(
        "--dp-clip", type=float, metavar="C", help="with --dp-noise: clipping norm C (default 1.0)"
    )
    demo.add_argument(
        "--dp-budget",
        type=float,
        metavar="EPS",
        help="with --dp-noise: the most epsilon (delta 1e-5) the private line may spend; rounds "
        "past it are refused",
    )
    demo.add_argument(
        "--aggregators",
        type=int,
        default=1,
        metavar="M",
        help="M aggregator replicas on their own stores and keys attest each round (embedded "
        "chain, plaintext; default 1)",
    )
    demo.add_argument(
        "--quorum",
        type=int,
        metavar="T",
        help="with --aggregators: a round is final when T replicas attest the same result "
        "(default: a majority). Not --threshold, which is the CKKS key's t-of-n",
    )
    demo.add_argument(
        "--dishonest-aggregator",
        action="store_true",
        help="with --aggregators >= 2: aggregator 2 runs another rule; its votes are evidence",
    )
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
