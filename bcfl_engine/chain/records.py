"""What the ledger returns: receipts, tasks and committed rounds, and the metadata hash."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument
from ..updates import keccak256
from .merkle import as_bytes32, round_root

Meta = bytes | str | Mapping[str, Any]


@dataclass(frozen=True)
class Receipt:
    """A mined transaction: its hash, the gas it used, its block; ``noop`` for a re-commit."""

    tx_hash: bytes | None
    gas_used: int
    block_number: int | None
    noop: bool = False


@dataclass(frozen=True)
class TaskInfo:
    task: int
    owner: str
    aggregator: str
    participants_root: bytes
    model_spec_hash: bytes


@dataclass(frozen=True)
class RoundRecord:
    """One committed round, as its ``RoundCommitted`` event tells it."""

    task: int
    round: int
    updates_root: bytes
    contributions_root: bytes
    result_digest: bytes
    meta_hash: bytes
    n: int
    block_number: int
    tx_hash: bytes

    @property
    def root(self) -> bytes:
        """The root the contract stores for this round."""
        return round_root(self.updates_root, self.contributions_root)

    @property
    def tuple(self) -> bytes:
        """The id of the committed tuple (:func:`tuple_id`), what a quorum voted for."""
        return tuple_id(
            self.updates_root, self.contributions_root, self.result_digest, self.meta_hash, self.n
        )


def tuple_id(
    updates_root: bytes, contributions_root: bytes, result_digest: bytes, meta_hash: bytes, n: int
) -> bytes:
    """The 24-byte id under which aggregators of a quorum vote for a round's tuple: the first 24
    bytes of keccak256(abi.encode(updatesRoot, contributionsRoot, resultDigest, metaHash, n)),
    as ``RoundRegistry.attestRound`` computes it."""
    words = [
        as_bytes32(updates_root, "updates_root"),
        as_bytes32(contributions_root, "contributions_root"),
    ]
    words += [as_bytes32(result_digest, "result_digest"), as_bytes32(meta_hash, "meta_hash")]
    return keccak256(b"".join(words) + int(n).to_bytes(32, "big"))[:24]


def meta_hash(meta: Meta) -> bytes:
    """The metadata hash a round commits.

    ``meta`` is either the hash itself (32 bytes, e.g. the key of the metadata in a payload
    store) or the metadata: text is hashed as UTF-8, a mapping as JSON with sorted keys and no
    spaces, so every party hashes the same bytes.
    """
    if isinstance(meta, (bytes, bytearray)):
        return as_bytes32(meta, "meta (bytes are taken as the 32-byte metadata hash)")
    from .. import protocol  # protocol imports this package

    if isinstance(meta, str):
        return protocol.meta_hash(meta.encode())
    if isinstance(meta, Mapping):
        return protocol.meta_hash(protocol.encode_meta(meta))
    raise InvalidArgument(
        f"meta must be a 32-byte hash, str or a mapping; got {type(meta).__name__}"
    )
