"""One round over several ingest nodes: each node accepts and stores its clients' payloads, the
nodes aggregate together over ``torch.distributed``, one node commits.

Each node (one rank of a process group) runs an
:class:`~bcfl_engine.round.AggregationRound` for the same task, round, participants, rule and
parameters on its own :class:`~bcfl_engine.store.PayloadStore`, and only accepts
(``submit`` / ``submit_many``: signed, checked, durable before acknowledged). It never calls
``finalize`` itself: every node calls :func:`finalize_nodes` instead, which

1. exchanges the nodes' acceptance records (small metadata, no payload bytes) and checks that
   the nodes run the same round; a client accepted by two nodes is a
   :class:`~bcfl_engine.errors.DuplicateClient` on every node (nothing is committed: a client
   that sent to two nodes, even the same payload, is resolved by the operator, say by
   restarting one node's round without it; the nodes never pick one copy on their own);
2. orders the round canonically: **node 0's payloads in its acceptance order, then node 1's,
   and so on**. That is the row order of :func:`bcfl_engine.distributed.aggregate` (global order
   is rank order), the order of the Merkle leaves (:func:`bcfl_engine.protocol.leaves_of`) and
   the order the audit stacks the rows in. So the round commits exactly what a single
   :class:`~bcfl_engine.round.AggregationRound` commits when it accepts the same payloads in that
   order: the same root and, per :mod:`bcfl_engine.distributed`'s guarantees for the backend, the
   same result bits;
3. aggregates with :func:`bcfl_engine.distributed.aggregate`, each node's rows as it holds them
   (the rule's backend pinned in the metadata, as a single round pins it);
4. writes on every node the result bytes, the metadata (which adds ``nodes``: each node's
   number of payloads, in rank order; :func:`bcfl_engine.protocol.round_meta`) and the round
   record (``round.json``, which adds ``node``: the node's rank, and ``nodes``: the number of
   nodes), checks that every node holds the same tuple, and only then lets node
   ``commit_rank`` commit it; every node ends with the same :class:`RoundResult`.

The audit recomputes such a round from the union of the nodes' stores
(``audit(ledger, task, round, [store_0, store_1, ...])``, ``bcfl audit --store A --store B``;
:mod:`bcfl_engine.audit_nodes`).

Failures. A node that dies, or does not answer within the process group's timeout, makes every
other node raise :class:`~bcfl_engine.errors.PeerFailure` (the group's timeout must exceed the
time of a commit). Every payload a node acknowledged is already durable in its store, so nothing
is lost: start the nodes again (a new group), open each node's round on its store (it resumes
from its log) and call :func:`finalize_nodes` again. If the commit went through before the
failure, the rerun recomputes the round, finds it on chain, checks that it is the same and
commits nothing (RoundConflict if it is not the same).
"""

from __future__ import annotations

import time
from typing import Any

import torch

from . import backends, protocol, rules
from .errors import BcflError, DuplicateClient, InvalidArgument, PayloadError
from .round import AggregationRound
from .round_result import RoundResult

__all__ = ["finalize_nodes"]

_SAME = ("task", "round", "key", "rule", "f", "pre", "params", "backend", "dim", "participants")
"""What every node of a round must agree on."""


def finalize_nodes(
    rnd: AggregationRound, *, group: Any = None, commit_rank: int = 0
) -> RoundResult:
    """Aggregate and commit the round that every node of ``group`` collected (see the module
    docstring); a collective: every node calls it with its own round. Returns the same
    :class:`RoundResult` on every node.

    Parameters
    ----------
    rnd : this node's round: a plaintext :class:`~bcfl_engine.round.AggregationRound` (a rule
        of :data:`bcfl_engine.distributed.RULES`, the iterative ones and pre-steps on the torch
        backend, no DP, not CKKS) on its own store
    group : the process group of the nodes (None: the default group, initialised)
    commit_rank : the node that sends the commit (its ledger's signer is the task's aggregator)

    Raises the same typed error on every node: InvalidArgument (a round this cannot run, nodes
    that disagree on the round, no payload at all), DuplicateClient (a client accepted by two
    nodes), PeerFailure (a node died or timed out), RoundConflict (the chain holds another
    commit of this round); a failed commit is raised on the committing node and as ChainError on
    the others. Nothing is committed unless every node holds the round's result, metadata and
    record.
    """
    import torch.distributed as dist

    from .chain.errors import ChainError, RoundConflict
    from .distributed import aggregate
    from .distributed_comm import gather_objects

    if not dist.is_available() or not dist.is_initialized():
        raise InvalidArgument("finalize_nodes: torch.distributed is not initialised")
    rank, world = dist.get_rank(group), dist.get_world_size(group)
    if not 0 <= commit_rank < world:
        raise InvalidArgument(f"commit_rank must be in [0, {world}); got {commit_rank!r}")
    state, rows = _local_state(rnd)
    states = gather_objects(state, group, "exchange of the nodes' acceptance records")
    records = _check_nodes(states, rnd.round)
    counts = [len(s["records"]) for s in states]
    t0 = time.perf_counter()
    info = rules.get(rnd.rule)
    weights = [int(r["weight"]) for r in rnd._records]
    out = aggregate(
        rows,
        rule=rnd.rule,
        f=rnd.f,
        weights=torch.tensor(weights, dtype=torch.float64) if info.weighted else None,
        client_ids=[r["client"] for r in rnd._records],
        group=group,
        backend=state["backend"],
        pre=rnd.pre,
        **rnd.params,
    )
    seconds = time.perf_counter() - t0
    store = rnd.store
    result_bytes = protocol.encode_update(out)
    meta = protocol.round_meta(
        task=rnd.task,
        round=rnd.round,
        secure=None,
        rule=rnd.rule,
        f=rnd.f,
        params=rnd.params,
        pre=rnd.pre,
        backend=state["backend"],
        dim=rnd.dim,
        nodes=counts,
    )
    result_digest, meta_hash, leaves, tree, record = rnd._stored(result_bytes, meta, records)
    record |= {"node": rank, "nodes": world}
    commit = rnd.ledger.record(rnd.task, rnd.round)
    if commit is None or store.read_round(rnd.key, rnd.round, problems=[]) is None:
        store.write_round(rnd.key, rnd.round, record)  # before the commit, as a single round
    tuples = gather_objects(
        (tree.root, result_digest, meta_hash), group, "check that every node holds the round"
    )
    if len(set(tuples)) != 1:  # the engine is deterministic: this is a bug or a tampered node
        raise RoundConflict(f"the nodes computed different rounds: {_show_tuples(tuples)}")
    receipt: Any = None
    gas = 0
    if commit is not None:
        held = (commit.updates_root, commit.result_digest, commit.meta_hash, commit.n)
        if held != (tree.root, result_digest, meta_hash, len(leaves)):
            raise RoundConflict(
                f"round {rnd.round} of task {rnd.task} is committed on chain with root "
                f"0x{commit.updates_root.hex()} over {commit.n} updates, result "
                f"0x{commit.result_digest.hex()}; the nodes' stores give root "
                f"0x{tree.root.hex()} over {len(leaves)}, result 0x{result_digest.hex()}"
            )
        from .chain import Receipt

        saved = store.read_round(rnd.key, rnd.round, problems=[]) or {}
        gas = saved.get("gas_used", 0) if isinstance(saved.get("gas_used"), int) else 0
        receipt = Receipt(commit.tx_hash, gas, commit.block_number, noop=True)
    else:
        failure: str | None = None
        error: BcflError | None = None
        if rank == commit_rank:
            try:
                receipt = rnd.ledger.attest_round(
                    rnd.task,
                    round=rnd.round,
                    updates_root=tree.root,
                    result_digest=result_digest,
                    meta=meta_hash,
                    n=len(leaves),
                )
                gas = int(getattr(receipt, "gas_used", 0) or 0)
            except BcflError as exc:
                failure, error = f"{type(exc).__name__}: {exc}", exc
        mined = None if receipt is None else (receipt.tx_hash, gas, receipt.block_number)
        sent = gather_objects(
            (failure, mined), group, "the commit's outcome from the committing node"
        )
        failure, mined = sent[commit_rank]
        if failure is not None:
            if rank == commit_rank and error is not None:
                raise error
            raise ChainError(f"node {commit_rank} could not commit the round: {failure}")
        if rank != commit_rank:
            from .chain import Receipt

            receipt = Receipt(*mined)
            gas = mined[1]
        store.write_round(rnd.key, rnd.round, {**record, "gas_used": gas})
    rnd.result = RoundResult(
        out,
        result_digest,
        tree.root,
        meta_hash,
        leaves,
        [r["client"] for r in records],
        tree,
        receipt,
        seconds,
        gas,
    )
    return rnd.result


def _local_state(rnd: AggregationRound) -> tuple[dict[str, Any], torch.Tensor]:
    """What every node must know of this node's round (or why it cannot run), and its rows."""
    state: dict[str, Any] = {"problem": None, "records": []}
    rows = torch.zeros(0, 1)
    try:
        from .distributed_check import ITERATIVE_RULES, RULES

        if not isinstance(rnd, AggregationRound):
            raise InvalidArgument(f"expected an AggregationRound; got {type(rnd).__name__}")
        if rnd.secure is not None or rnd.dp is not None:
            raise InvalidArgument(
                "a round over several nodes aggregates plaintext updates with a rule (and "
                f"pre-steps), without DP; got secure={rnd.secure!r}, dp={rnd.dp!r}"
            )
        if rnd.rule not in RULES:
            raise InvalidArgument(
                f"rule {rnd.rule!r} is not aggregated over several nodes; has {RULES}"
            )
        torch_only = rnd.rule in ITERATIVE_RULES or bool(rnd.pre)
        if torch_only and rnd.backend not in (None, "torch"):
            what = rnd.rule if rnd.rule in ITERATIVE_RULES else "a round with pre-steps"
            raise InvalidArgument(
                f"{what} over several nodes runs the torch reference's step only; this "
                f"round pins backend={rnd.backend!r}"
            )
        if rnd.result is not None:
            raise InvalidArgument(f"round {rnd.round} of task {rnd.task} was finalized already")
        rows = _rows(rnd)
        probe = rows if rows.shape[0] else torch.zeros(1, rows.shape[1])
        kernels = rules.get(rnd.rule).kernels
        # The distributed iterative rules and pre-steps run the torch step (distributed.py).
        backend = "torch" if torch_only else rnd.backend
        state["backend"] = backends.choose(rnd.rule, kernels, probe, backend).backend
        state["records"] = [
            {k: r[k] for k in ("client", "digest", "weight", "salt")} for r in rnd._records
        ]
        same = {k: getattr(rnd, k) for k in _SAME if k not in ("participants",)}
        state["same"] = {**same, "participants": rnd._registered}
    except BcflError as exc:
        state["problem"] = f"{type(exc).__name__}: {exc}"
    return state, rows


def _check_nodes(states: list[dict[str, Any]], round: int) -> list[dict[str, Any]]:
    """The round's records in canonical order, after the checks every node runs on the same
    gathered states (so every node raises the same error)."""
    for r, s in enumerate(states):
        if s["problem"] is not None:
            raise InvalidArgument(f"node {r} cannot run the round: {s['problem']}")
    for k in _SAME:
        values = [s["same"][k] for s in states]
        if any(v != values[0] for v in values):
            raise InvalidArgument(f"the nodes run different rounds: {k} per node {values}")
    chosen = [s["backend"] for s in states]
    if any(b != chosen[0] for b in chosen):
        raise InvalidArgument(
            f"the nodes would run different backends {chosen} (pinned in the metadata): "
            "pass backend= to every node's round"
        )
    where: dict[str, list[int]] = {}
    for r, s in enumerate(states):
        for rec in s["records"]:
            where.setdefault(rec["client"], []).append(r)
    twice = {c: nodes for c, nodes in where.items() if len(nodes) > 1}
    if twice:
        client, nodes = next(iter(twice.items()))
        raise DuplicateClient(
            f"round {round}: client {client} was accepted by nodes {nodes} ({len(twice)} "
            "client(s) on two nodes); a client belongs to one node: restart the round without "
            "it on all nodes but one"
        )
    records = [rec for s in states for rec in s["records"]]
    if not records:
        raise InvalidArgument(f"round {round} has no accepted payload on any node")
    return records


def _rows(rnd: AggregationRound) -> torch.Tensor:
    """This node's ``[n_r, d]`` rows in acceptance order: the round's batch, or, for a round
    found committed on chain (whose rows a resumed round does not load), its stored payloads."""
    assert rnd.dim is not None
    if rnd._commit is None:
        assert rnd._batch is not None
        return rnd._batch.data
    if not rnd._records:
        return torch.zeros(0, rnd.dim)
    out = []
    for r in rnd._records:
        data = rnd.store.payload(rnd.key, rnd.round, r["digest"], hasher=protocol.payload_digest)
        try:
            protocol.check_update_size(data, rnd.dim)
        except BcflError as exc:
            raise PayloadError(f"client {r['client']}: {exc}") from None
        out.append(protocol.decode_update(data, rnd.dim))
    return torch.stack(out)


def _show_tuples(tuples: list[tuple[bytes, bytes, bytes]]) -> str:
    return "; ".join(
        f"node {r}: root 0x{a.hex()[:16]}.., result 0x{b.hex()[:16]}.., meta 0x{c.hex()[:16]}.."
        for r, (a, b, c) in enumerate(tuples)
    )
