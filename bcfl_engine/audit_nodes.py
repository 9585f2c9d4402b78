"""The stores of a round's ingest nodes read as one store, for the audit.

A round over several nodes (:mod:`bcfl_engine.round_nodes`) leaves each node's acceptance
records and payloads in that node's own store, and in each the round's result, metadata and a
round record (``round.json``) that names the node's rank (``node``) and the number of nodes
(``nodes``). :class:`NodeStores` opens those stores read-only and answers what
:func:`bcfl_engine.audit.audit` reads as if they were one store: the records in the round's
canonical order (node 0's in acceptance order, then node 1's, ...: each numbered by its place
in that order, and marked with its node and store), each payload from the store that holds it,
the round record the nodes agree on. What does not fit is one of its findings
(:meth:`NodeStores.problems`): a store that names no node, two stores for one node, a node no
store holds, stores that disagree on what was committed, a node whose records are not numbered
0, 1, ..., and (:func:`check_nodes`) a node holding another number of payloads than the
committed metadata says.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

from .errors import InvalidArgument, PayloadError
from .store import PayloadStore

__all__ = ["NodeStores", "check_nodes", "open_stores"]

_COMMITTED = ("task", "round", "contract", "root", "result_digest", "meta_hash", "n")
"""The fields of a round record that every node's copy must hold alike."""


class NodeStores(PayloadStore):
    """The stores of a round's ingest nodes, given in any order, as one read-only store.

    Parameters
    ----------
    stores : the nodes' stores (PayloadStore objects or folders; folders are opened read-only)
    """

    def __init__(self, stores: Sequence[PayloadStore | str | os.PathLike[str]]) -> None:
        if isinstance(stores, (str, os.PathLike)) or not stores:
            raise InvalidArgument("NodeStores needs a list of one or more stores")
        self.stores = [
            s if isinstance(s, PayloadStore) else PayloadStore(s, readonly=True) for s in stores
        ]
        super().__init__(self.stores[0].root, readonly=True)
        self._placed: dict[tuple[object, int], tuple[list[PayloadStore | None], list[str]]] = {}

    def __repr__(self) -> str:
        return f"NodeStores({[str(s.root) for s in self.stores]!r})"

    def placed(self, task: object, round: int) -> tuple[list[PayloadStore | None], list[str]]:
        """Each node's store in rank order (None: no store given holds that node), and the
        findings of placing them."""
        known = self._placed.get((task, round))
        if known is not None:
            return known
        problems: list[str] = []
        ranks: dict[int, PayloadStore] = {}
        worlds: set[int] = set()
        for store in self.stores:
            rec = store.read_round(task, round, problems=problems)
            node: Any = (rec or {}).get("node")
            nodes: Any = (rec or {}).get("nodes")
            if rec is None:
                problems.append(
                    f"store {store.root} holds no round record of round {round}: which node it "
                    "is (and what it committed) is unknown"
                )
            elif not _count(nodes, 1) or not _count(node, 0) or node >= nodes:
                if len(self.stores) > 1:
                    problems.append(
                        f"store {store.root}: its round record names no node of a round over "
                        f"several nodes (node {node!r}, nodes {nodes!r})"
                    )
                else:
                    ranks[0] = store  # a single store of a single aggregator's round
                    worlds.add(1)
            elif node in ranks:
                problems.append(
                    f"stores {ranks[node].root} and {store.root} both say they are node {node}"
                )
            else:
                ranks[node] = store
                worlds.add(nodes)
        if len(worlds) > 1:
            problems.append(f"the stores disagree on the number of nodes: {sorted(worlds)}")
        world = max(worlds | {max(ranks, default=-1) + 1})
        missing = [r for r in range(world) if r not in ranks]
        if missing:
            problems.append(
                f"node(s) {missing} of {world}: none of the given stores holds their payloads"
            )
        known = ([ranks.get(r) for r in range(world)], problems)
        self._placed[(task, round)] = known
        return known

    # ---- what the audit reads --------------------------------------------------------------

    def accepted(
        self, task: object, round: int, *, problems: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """Every node's records in canonical order, numbered by their place in it."""
        placed, found = self.placed(task, round)
        sink = problems if problems is not None else []
        sink.extend(found)
        out: list[dict[str, Any]] = []
        for rank, store in enumerate(placed):
            if store is None:
                continue
            raw = store.accepted(task, round, problems=sink)
            good = [r for r in raw if isinstance(r, dict) and _count(r.get("seq"), 0)]
            good.sort(key=lambda r: r["seq"])
            if [r["seq"] for r in good] != list(range(len(good))):
                sink.append(
                    f"node {rank} (store {store.root}): its records are numbered "
                    f"{[r['seq'] for r in good][:16]}; expected 0 .. {len(good) - 1}, each once"
                )
            for r in good:
                out.append({**r, "seq": len(out), "node": rank, "store": str(store.root)})
            out.extend(r for r in raw if not (isinstance(r, dict) and _count(r.get("seq"), 0)))
        if problems is None and sink:
            raise PayloadError(sink[0])
        return out

    def read_round(
        self, task: object, round: int, *, problems: list[str] | None = None
    ) -> dict[str, Any] | None:
        """Node 0's round record, once every node's record says the same of the commit."""
        placed, _ = self.placed(task, round)
        sink = problems if problems is not None else []
        recs: list[tuple[PayloadStore, dict[str, Any]]] = []
        for s in placed:
            rec = None if s is None else s.read_round(task, round, problems=sink)
            if s is not None and rec is not None:
                recs.append((s, rec))
        if not recs:
            return None
        first_store, first = recs[0]
        for store, rec in recs[1:]:
            for k in _COMMITTED:
                if rec.get(k) != first.get(k):
                    sink.append(
                        f"{k.replace('_', ' ')} differs between the nodes' round records: "
                        f"{first.get(k)!r:.80} in {first_store.root}, {rec.get(k)!r:.80} in "
                        f"{store.root}"
                    )
        if problems is None and sink:
            raise PayloadError(sink[0])
        return first

    def payload(
        self,
        task: object,
        round: int,
        digest: bytes | str,
        *,
        hasher: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """The payload of ``digest`` from the first node's store that holds it."""
        placed, _ = self.placed(task, round)
        for store in placed:
            if store is None:
                continue
            try:
                return store.payload(task, round, digest, hasher=hasher)
            except PayloadError:
                continue
        raise PayloadError(f"payload {digest!r:.70} is in none of the stores {self!r}")

    def has(self, digest: bytes | str) -> bool:
        return any(s.has(digest) for s in self.stores)

    def get(
        self,
        digest: bytes | str,
        *,
        verify: bool = True,
        hasher: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """An object (result, metadata) from the first store that holds it."""
        for store in self.stores:
            if store.has(digest):
                return store.get(digest, verify=verify, hasher=hasher)
        raise PayloadError(f"object {digest!r:.70} is in none of the stores {self!r}")


def open_stores(
    store: PayloadStore | str | os.PathLike[str] | Sequence[PayloadStore | str | os.PathLike[str]],
) -> PayloadStore:
    """What the audit reads: a store as given, a folder opened read-only, a list of stores (a
    round's ingest nodes) as their :class:`NodeStores`."""
    if isinstance(store, PayloadStore):
        return store
    if isinstance(store, (str, os.PathLike)):
        return PayloadStore(store, readonly=True)
    return NodeStores(store)


def check_nodes(store: PayloadStore, meta: dict[str, Any], task: object, round: int) -> list[str]:
    """The findings of a round's node layout: each node's number of payloads against the
    committed metadata's ``nodes`` (a round over several nodes audited from one store, or a
    single round audited from several, is a finding too)."""
    nodes = meta.get("nodes")
    if not isinstance(store, NodeStores):
        if nodes is None:
            return []
        return [
            f"the round was collected by {len(nodes)} ingest nodes: audit it from every node's "
            f"store (given: {store.root} alone)"
        ]
    placed, _ = store.placed(task, round)
    if nodes is None:
        return (
            []
            if len(placed) == 1
            else [f"the committed metadata names no ingest nodes; {len(placed)} stores given"]
        )
    problems = []
    if len(nodes) != len(placed):
        problems.append(
            f"the committed metadata names {len(nodes)} nodes; the stores name {len(placed)}"
        )
    for rank, (want, s) in enumerate(zip(nodes, placed, strict=False)):
        got = 0 if s is None else len(s.accepted(task, round, problems=[]))
        if s is not None and got != want:
            problems.append(
                f"node {rank} (store {s.root}) holds {got} payloads; the committed metadata "
                f"says {want}"
            )
    return problems


def _count(v: object, lo: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= lo
