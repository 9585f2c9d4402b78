"""What a committed round returns, and how a round already on chain is read back.

:class:`RoundResult` is what :meth:`~bcfl_engine.round.AggregationRound.finalize` returns;
:func:`committed_result` rebuilds it from the store for a round the chain already holds (an
aggregator restarted after its commit), without committing again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from . import protocol
from .errors import PayloadError
from .protocol import leaves_of
from .store import PayloadStore


@dataclass
class RoundResult:
    """What a committed round returns.

    Attributes
    ----------
    update : the aggregate: ``[d]`` float32 tensor, or the CKKS ciphertext bytes
    result_digest, root : the digest of the result bytes, the Merkle root of the leaves
    leaves, clients : in acceptance order; ``proof(i)`` gives client i's inclusion proof
    gas_used, seconds : the commit's gas and the aggregation time (a round found committed
        on chain: the gas the store recorded, 0 seconds, and a receipt with ``noop=True``)
    """

    update: Any
    result_digest: bytes
    root: bytes
    meta_hash: bytes
    leaves: list[bytes]
    clients: list[str]
    tree: Any
    receipt: Any
    seconds: float
    gas_used: int = field(default=0)

    def proof(self, i: int) -> list[bytes]:
        return list(self.tree.proof(i))


def committed_result(
    commit: Any,
    records: Sequence[dict[str, Any]],
    store: PayloadStore,
    key: str,
    decode: Callable[[bytes], Any] | None = None,
) -> RoundResult:
    """The result of the round ``commit`` (a :class:`~bcfl_engine.chain.RoundRecord`) from
    its acceptance ``records`` and the result bytes in ``store`` (``decode`` turns them into
    the update; None keeps the bytes, a CKKS aggregate).

    RoundConflict when the records are not those committed; PayloadError when the result
    bytes or the metadata are missing or altered. The receipt says ``noop=True``: nothing was sent.
    """
    from .chain import MerkleTree, Receipt
    from .chain.errors import RoundConflict

    where = f"round {commit.round} of task {commit.task} is committed on chain"
    if not records:
        raise RoundConflict(f"{where}, but the store {store.root} holds none of its records")
    leaves = leaves_of(commit.round, records)
    tree = MerkleTree.from_leaves(leaves)
    if tree.root != commit.updates_root or len(leaves) != commit.n:
        raise RoundConflict(
            f"{where} with root 0x{commit.updates_root.hex()} over {commit.n} updates; "
            f"the store's {len(leaves)} records give 0x{tree.root.hex()}"
        )
    # The result is named by the payload digest the round recorded (keccak-256 before
    # bcfl-round/3): an older committed round resumes too.
    try:
        meta = protocol.check_meta(
            json.loads(store.get(commit.meta_hash, hasher=protocol.meta_hash))
        )
    except ValueError as exc:  # not JSON (a PayloadError is a ValueError too: kept as is)
        if isinstance(exc, PayloadError):
            raise
        raise PayloadError(f"{where}; its stored metadata is unreadable: {exc}") from None
    result_bytes = store.get(commit.result_digest, hasher=protocol.digest_function(meta["digest"]))
    update = result_bytes if decode is None else decode(result_bytes)
    saved = store.read_round(key, commit.round) or {}
    gas = saved.get("gas_used", 0)
    gas = gas if isinstance(gas, int) and not isinstance(gas, bool) else 0
    return RoundResult(
        update,
        commit.result_digest,
        tree.root,
        commit.meta_hash,
        leaves,
        [r["client"] for r in records],
        tree,
        Receipt(commit.tx_hash, gas, commit.block_number, noop=True),
        0.0,
        gas,
    )
