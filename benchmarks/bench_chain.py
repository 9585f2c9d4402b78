"""Gas of a round on chain: one Merkle-root commit versus one stored digest per client.

Side by side, in one run, on the embedded chain (eth-tester + py-evm) and on anvil, both under
Prague rules:

- ``RoundRegistry.commitRound`` at 10, 1,000 and 100,000 leaves (real trees of update leaves);
- ``RoundRegistry.verifyInclusion`` of one leaf of a 16,384-leaf round, sent as a transaction
  (what a contract calling it would pay at most; an ``eth_call`` is free);
- a quorum of m = 1, 3, 7 aggregators (t = m // 2 + 1) at the same sizes: the gas of a vote
  (``attestRound`` that does not finalize: the first one, which also spells out the tuple), of the
  finalizing vote, of a late agreeing vote, and of a finalizing vote that names one, then every
  (m - t) earlier conflicting vote as evidence; m = 1 is ``commitRound`` (both columns);
- the baseline ``DigestPerClient``: every client's digest in its own slot, batched by the
  aggregator in one transaction (its cheapest form), and one transaction per client (what
  existing BCFL contracts do). 100,000 digests exceed a 30 M-gas block, so that point is the
  per-client slope measured between 10 and 1,000 clients, extrapolated, and marked so.

Run: ``python benchmarks/bench_chain.py`` (``--no-anvil`` for the embedded chain only). Needs
the chain extra and ``npm ci --prefix contracts``.
"""

from __future__ import annotations

import argparse
import random
import sys
import time
from typing import Any

from bcfl_engine.chain import AnvilNode, Ledger, MerkleTree, leaf_hash
from bcfl_engine.chain._web3 import artifact
from bcfl_engine.chain.ledger import _send
from bcfl_engine.updates import keccak256

SIZES = (10, 1_000, 100_000)
PROOF_LEAVES = 16_384
BLOCK_GAS = 30_000_000


def tree_of(n: int, seed: int) -> MerkleTree:
    rng = random.Random(seed)
    return MerkleTree.from_leaves(
        [
            leaf_hash(
                1, rng.randbytes(20), rng.randbytes(32), rng.randrange(1, 10**5), rng.randbytes(32)
            )
            for _ in range(n)
        ]
    )


def registry_gas(
    ledger: Ledger, trees: dict[int, MerkleTree], proof_tree: MerkleTree
) -> dict[str, int]:
    task = ledger.create_task(
        aggregator=ledger.sender, participants=[ledger.sender], model_spec=b"bench"
    )
    out: dict[str, int] = {}
    # Round 1 skips the read of round r - 1, so it is cheaper: measure from round 2 on.
    for r, n in enumerate([1, *SIZES], start=1):
        tree = trees.get(n) or tree_of(n, seed=n)
        gas = ledger.commit_round(
            task,
            r,
            updates_root=tree.root,
            result_digest=keccak256(b"%d" % r),
            meta={"rule": "mean"},
            n=n,
        ).gas_used
        if r == 1:
            out["commit (round 1)"] = gas
        else:
            out[f"commit n={n}"] = gas
    r = len(SIZES) + 2
    ledger.commit_round(
        task, r, updates_root=proof_tree.root, result_digest=bytes(32), meta="", n=PROOF_LEAVES
    )
    i = PROOF_LEAVES * 3 // 4 + 1
    assert ledger.verify_inclusion(task, r, proof_tree.leaves[i], proof_tree.proof(i))
    out[f"inclusion at {PROOF_LEAVES}"] = ledger.transact(
        "verifyInclusion", task, r, proof_tree.leaves[i], [*proof_tree.proof(i), bytes(32)]
    ).gas_used
    return out


QUORUMS = (1, 3, 7)


def quorum_gas(owner: Ledger, keys: list[bytes], trees: dict[int, MerkleTree]) -> dict[str, int]:
    """Vote and finalization gas per quorum size m and number of leaves n (keys[1..m] vote)."""
    out: dict[str, int] = {}
    for m in QUORUMS:
        t = m // 2 + 1
        aggs = [owner.as_sender(k) for k in keys[1 : m + 1]]
        task = owner.create_task(
            aggregators=[a.sender for a in aggs], threshold=t, participants=[owner.sender],
            model_spec=b"bench quorum",
        )  # fmt: skip

        def vote(a: Ledger, r: int, tree: MerkleTree, tag: bytes = b"", task: int = task) -> int:
            return a.attest_round(
                task, r, updates_root=tree.root, result_digest=keccak256(tag + b"%d" % r),
                meta={"rule": "mean"}, n=len(tree),
            ).gas_used  # fmt: skip

        # Round 1 skips the read of round r - 1 under m = 1: measure from round 2 on.
        for a in aggs[:t]:
            vote(a, 1, tree_of(1, seed=1))
        for r, n in enumerate(SIZES, start=2):
            gas = [vote(a, r, trees[n]) for a in aggs[:t]]
            out[f"m={m} vote n={n}"] = max(gas[:-1], default=gas[-1])
            out[f"m={m} final n={n}"] = gas[-1]
            if m > t:
                out[f"m={m} late n={n}"] = vote(aggs[t], r, trees[n])
        if (
            m > 1
        ):  # seats outside the quorum vote other tuples first; the finalizing vote names them
            for r, (key, bad) in enumerate(
                (("a conflict", aggs[-1:]), ("all conflicts", aggs[t:])), start=len(SIZES) + 2
            ):
                for i, a in enumerate(bad):
                    vote(a, r, trees[SIZES[0]], b"other %d" % i)
                gas = [vote(a, r, trees[SIZES[0]]) for a in aggs[:t]]
                out[f"m={m} final naming {key}"] = gas[-1]
    return out


def report_quorum(q: dict[str, int]) -> None:
    print(f"{'quorum (t = m // 2 + 1): vote / finalizing vote':<48}")
    print(f"  {'m':<6}" + "".join(f"{'n=' + format(n, ','):>22}" for n in SIZES))
    for m in QUORUMS:
        cells = [f"{q[f'm={m} vote n={n}']:,} / {q[f'm={m} final n={n}']:,}" for n in SIZES]
        print(f"  {m:<6}" + "".join(f"{c:>22}" for c in cells))
    for m in QUORUMS[1:]:
        late = max(q[f"m={m} late n={n}"] for n in SIZES)
        ratio = q[f"m={m} final n={SIZES[0]}"] / q[f"m=1 final n={SIZES[0]}"]
        print(
            f"  m={m}: late agreeing vote {late:,}; finalizing vote naming a conflict "
            f"{q[f'm={m} final naming a conflict']:,}, naming all {m - m // 2 - 1} "
            f"{q[f'm={m} final naming all conflicts']:,}; finalizing / commitRound {ratio:.2f}x"
        )


def quorum_ok(q: dict[str, int]) -> bool:
    """The issue's targets: a vote <= 60,000 and the finalizing one <= 80,000 at every n."""
    return all(
        q[f"m={m} vote n={n}"] <= 60_000 and q[f"m={m} final n={n}"] <= 80_000
        for m in QUORUMS
        for n in SIZES
    ) and all(v <= 80_000 for k, v in q.items() if "naming" in k)


def baseline_gas(w3: Any, keys: list[bytes]) -> dict[str, float]:
    from eth_account import Account

    art = artifact("DigestPerClient")
    account = Account.from_key(keys[0])
    addr = _send(
        w3, account, w3.eth.contract(abi=art["abi"], bytecode=art["bytecode"]).constructor()
    )["contractAddress"]
    c = w3.eth.contract(address=addr, abi=art["abi"])
    rng = random.Random(7)
    out: dict[str, float] = {}
    for r, n in enumerate(SIZES[:2], start=1):
        clients = [w3.to_checksum_address(rng.randbytes(20)) for _ in range(n)]
        digests = [rng.randbytes(32) for _ in range(n)]
        out[f"batched n={n}"] = _send(w3, account, c.functions.storeBatch(1, r, clients, digests))[
            "gasUsed"
        ]
    slope = (out[f"batched n={SIZES[1]}"] - out[f"batched n={SIZES[0]}"]) / (SIZES[1] - SIZES[0])
    out[f"batched n={SIZES[2]} (extrapolated)"] = out[f"batched n={SIZES[1]}"] + slope * (
        SIZES[2] - SIZES[1]
    )
    out["batched per client (slope)"] = slope
    per_tx = [
        _send(w3, Account.from_key(k), c.functions.store(1, 9, rng.randbytes(32)))["gasUsed"]
        for k in keys[: SIZES[0]]
    ]
    out["one tx per client, per client"] = sum(per_tx) / len(per_tx)
    for n in SIZES:
        out[f"one tx per client n={n}"] = out["one tx per client, per client"] * n
    return out


def report(name: str, reg: dict[str, int], base: dict[str, float]) -> None:
    print(f"\n== {name} ==")
    print(f"{'RoundRegistry':<40}{'gas':>14}")
    for k, v in reg.items():
        print(f"  {k:<38}{v:>14,}")
    print(f"{'DigestPerClient (baseline)':<40}{'gas':>14}")
    for k, v in base.items():
        print(f"  {k:<38}{v:>14,.0f}")
    print(
        f"{'round gas, baseline / registry':<40}{'batched':>14}{'tx per client':>16}{'30M blocks':>12}"
    )
    for n in SIZES:
        ours = reg[f"commit n={n}"]
        batched = base.get(f"batched n={n}") or base[f"batched n={n} (extrapolated)"]
        per_tx = base[f"one tx per client n={n}"]
        print(
            f"  n={n:<36,}{batched / ours:>13,.1f}x{per_tx / ours:>15,.1f}x{batched / BLOCK_GAS:>12.2f}"
        )
    spread = max(reg[f"commit n={n}"] for n in SIZES) - min(reg[f"commit n={n}"] for n in SIZES)
    print(f"  commit gas spread over n = {', '.join(map(str, SIZES))}: {spread} gas")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-anvil", action="store_true", help="embedded chain only")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    trees = {n: tree_of(n, seed=n) for n in SIZES}
    proof_tree = tree_of(PROOF_LEAVES, seed=1)
    print(
        f"built trees of {', '.join(map(str, SIZES))} and {PROOF_LEAVES} leaves in {time.perf_counter() - t0:.1f} s"
    )
    results = {}
    quorums = {}
    emb = Ledger.embedded()
    name = "embedded (eth-tester + py-evm, prague)"
    results[name] = (registry_gas(emb, trees, proof_tree), baseline_gas(emb.w3, emb.dev_keys))
    quorums[name] = quorum_gas(emb, emb.dev_keys, trees)
    if not args.no_anvil:
        with AnvilNode() as node:
            keys = [node.fund_key(b"bench %d" % i) for i in range(SIZES[0])]
            led = Ledger.deploy(node.w3, keys[0])
            name = f"{node.w3.client_version} (prague)"
            results[name] = (registry_gas(led, trees, proof_tree), baseline_gas(node.w3, keys))
            quorums[name] = quorum_gas(led, keys, trees)
    for name, (reg, base) in results.items():
        report(name, reg, base)
        report_quorum(quorums[name])
    ok = all(
        max(reg[f"commit n={n}"] for n in SIZES) <= 60_000
        and reg[f"inclusion at {PROOF_LEAVES}"] <= 45_000
        for reg, _ in results.values()
    ) and all(quorum_ok(q) for q in quorums.values())
    print(
        f"\ntargets (commit <= 60,000 at every n; inclusion at {PROOF_LEAVES} <= 45,000; "
        f"quorum vote <= 60,000 and finalizing vote <= 80,000 at m = 3, 7): "
        f"{'met' if ok else 'MISSED'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
