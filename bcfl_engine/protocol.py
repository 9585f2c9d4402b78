"""The round's byte format, defined once: what round, audit and the integrations all import.

Nothing here talks to a chain or a disk; every function is pure.

- **payload digest**: :func:`payload_digest` (BLAKE3-256: 24x keccak-256 on 1 MiB, one core) names
  a payload everywhere (the signature, the store's object name, the leaf, the committed result);
  :data:`DIGEST` is its name, recorded in every round's metadata, and :func:`digest_function`
  maps a recorded name back to its function, so a round committed with keccak-256 (format
  ``bcfl-round/2``) still audits. Changing the hash is one edit here.
- **metadata hash**: :func:`meta_hash`, keccak-256 of :func:`encode_meta`'s bytes, whatever
  the payload digest: the chain commits it, and an audit reads the metadata by it before it
  knows which payload digest the round used.
- **payload encoding**: a plaintext update is its flat float32 vector, little-endian
  (:func:`encode_update`); a CKKS update is what :func:`bcfl_engine.he.encrypt` returns.
- **what a client signs**: the EIP-712 typed data :data:`SIGNED_TYPE`,
  ``Payload(uint256 task, uint256 round, bytes32 digest, uint64 weight)``: the weight (the
  client's sample count) is signed with the payload, so nobody in between can reweight it.
- **weight bound**: :func:`check_weight`, an int in ``[1, MAX_WEIGHT]`` (a ``uint64``).
- **leaf**: :func:`leaf_hash` (OpenZeppelin double-hashed ``abi.encode(uint256 round, address
  client, bytes32 digest, uint256 weight, bytes32 salt)``), what the registry's
  ``verifyInclusion`` checks a proof against; :func:`leaves_of` over acceptance records.
- **records**: the acceptance record, the round record (``round.json``) and the metadata a
  round commits; :func:`check_acceptance`, :func:`check_round_record` and :func:`check_meta`
  (in :mod:`bcfl_engine.records`, re-exported here) turn a malformed one into a
  :class:`~bcfl_engine.errors.PayloadError` naming the field.
- **task key**: :func:`task_key`, the name of a task's folder in the store, from the task's
  identity on its chain (chain id, registry, task id, hash of the block that created it), so a
  rerun on a fresh chain never meets an older run's records.
"""

from __future__ import annotations

import json
import os
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from blake3 import blake3

from .chain.merkle import address_bytes, leaf_hash
from .errors import InvalidArgument, InvalidWeight, PayloadError, ShapeMismatch
from .records import check_acceptance, check_meta, check_round_record
from .updates import keccak256

FORMAT = "bcfl-round/3"
"""The metadata format of a committed round (1: unsigned weights, one folder per task id;
2: payloads named by keccak-256; 3: payloads named by BLAKE3-256)."""

DIGEST = "blake3-256"
"""The name of :func:`payload_digest`, recorded in each round's metadata."""

READABLE: dict[str, str] = {"bcfl-round/2": "keccak-256", FORMAT: DIGEST}
"""The metadata formats this engine audits, each with the payload digest it implies."""

MAX_WEIGHT = 2**64 - 1
"""The largest client weight: what the signed ``uint64 weight`` holds."""

SIGNED_FIELDS: tuple[tuple[str, str], ...] = (
    ("task", "uint256"),
    ("round", "uint256"),
    ("digest", "bytes32"),
    ("weight", "uint64"),
)
SIGNED_TYPE = "Payload(" + ",".join(f"{t} {n}" for n, t in SIGNED_FIELDS) + ")"
"""The EIP-712 struct a client signs (``encodeType``)."""


def payload_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 32-byte digest that names a payload: BLAKE3-256 (:data:`DIGEST`).

    One thread: 1 MiB hashes in 1/24 of keccak-256's time on a 2-core x86 machine (~5.8 GB/s
    against 0.24); the round hashes each payload once and passes the digest along.
    """
    return blake3(data).digest()


PARALLEL_DIGEST_BYTES = 8 << 20
"""From this many bytes in all, :func:`payload_digests` hashes on one thread per core."""


def payload_digests(payloads: Sequence[bytes]) -> list[bytes]:
    """:func:`payload_digest` of each payload, in order; a burst of at least
    :data:`PARALLEL_DIGEST_BYTES` split in contiguous slices over the cores (BLAKE3 releases
    the GIL: 1.65x on 2 cores for 1 MiB payloads, 1.2x for 16 KiB)."""
    workers = min(os.cpu_count() or 1, len(payloads))
    if workers < 2 or sum(len(p) for p in payloads) < PARALLEL_DIGEST_BYTES:
        return [payload_digest(p) for p in payloads]
    step = -(-len(payloads) // workers)
    slices = [payloads[i : i + step] for i in range(0, len(payloads), step)]
    with ThreadPoolExecutor(len(slices) - 1) as pool:
        rest = [pool.submit(lambda part: [payload_digest(p) for p in part], s) for s in slices[1:]]
        out = [payload_digest(p) for p in slices[0]]
        for future in rest:
            out += future.result()
    return out


def digest_function(name: str) -> Callable[[bytes], bytes]:
    """The payload digest recorded as ``name`` in a round's metadata (a value of
    :data:`READABLE`); PayloadError for a name this engine does not know."""
    if name == DIGEST:
        return payload_digest
    if name == "keccak-256":
        return keccak256
    raise PayloadError(f"unknown payload digest {name!r:.80}; this engine reads {READABLE}")


def meta_hash(meta_bytes: bytes) -> bytes:
    """The hash a round commits of its metadata bytes (:func:`encode_meta`): keccak-256."""
    return keccak256(meta_bytes)


def eip712_types() -> dict[str, list[dict[str, str]]]:
    """:data:`SIGNED_FIELDS` as the ``types`` of EIP-712 typed data."""
    return {"Payload": [{"name": n, "type": t} for n, t in SIGNED_FIELDS]}


def check_weight(weight: object, who: str = "weight") -> int:
    """``weight`` as an int in ``[1, MAX_WEIGHT]``; InvalidWeight otherwise (bools included)."""
    if isinstance(weight, bool) or not isinstance(weight, int):
        raise InvalidWeight(f"{who} must be an int; got {type(weight).__name__} {weight!r:.60}")
    if not 1 <= weight <= MAX_WEIGHT:
        shown = weight if weight.bit_length() <= 80 else f"an int of {weight.bit_length()} bits"
        raise InvalidWeight(f"{who} must be in [1, 2**64 - 1]; got {shown}")
    return weight


# ---- what a client sends -------------------------------------------------------------------


@dataclass(frozen=True)
class Payload:
    """What a client sends: its address, the payload bytes, its signature, its weight.

    ``weight`` is an int in ``[1, 2**64 - 1]`` (the client's sample count), signed with the
    payload; ``salt`` (32 bytes) hides the leaf and is drawn by the aggregator when the client
    sends none.
    """

    client: str
    data: bytes
    signature: bytes | None
    weight: int = 1
    salt: bytes | None = None


def sign_payload(
    key: Any, task: int, round: int, data: bytes, domain: Any, weight: int = 1
) -> Payload:
    """Client side: sign ``data`` and ``weight`` for ``round`` of ``task`` under ``domain``
    (the ledger's). ``weight`` is an int in ``[1, 2**64 - 1]`` (InvalidWeight otherwise)."""
    from .chain.signing import sign_payload as _sign

    digest = payload_digest(data)
    signed = _sign(key, task=task, round=round, digest=digest, domain=domain, weight=weight)
    return Payload(signed.client, data, signed.signature, weight)


# ---- plaintext payloads ---------------------------------------------------------------------


def encode_update(vector: torch.Tensor | np.ndarray) -> bytes:
    """A plaintext update as payload bytes: ``[d]`` float32, little-endian."""
    return np.ascontiguousarray(np.asarray(vector, dtype="<f4").reshape(-1)).tobytes()


def check_update_size(data: bytes | memoryview, dim: int) -> None:
    """ShapeMismatch unless ``data`` is the size of a plaintext update of ``dim`` values."""
    if len(data) != 4 * dim:
        raise ShapeMismatch(f"a plaintext update of d={dim} is {4 * dim} bytes; got {len(data)}")


def decode_update(data: bytes, dim: int) -> torch.Tensor:
    """The ``[dim]`` float32 vector in plaintext payload bytes (a copy); ShapeMismatch if the
    size differs."""
    check_update_size(data, dim)
    return torch.from_numpy(np.frombuffer(data, dtype="<f4").astype(np.float32))


def update_view(data: bytes, dim: int) -> torch.Tensor:
    """:func:`decode_update` without the copy: a read-only ``[dim]`` float32 view of ``data``.

    The caller must not write to it (the bytes are immutable); the round copies it once, into
    its batch buffer.
    """
    check_update_size(data, dim)
    if sys.byteorder != "little":  # the view would read the bytes in the wrong order
        return decode_update(data, dim)
    if dim == 0:
        return torch.empty(0, dtype=torch.float32)
    with warnings.catch_warnings():  # torch warns that the buffer is read-only: we only read it
        warnings.simplefilter("ignore", UserWarning)
        return torch.frombuffer(data, dtype=torch.float32)


# ---- leaves -----------------------------------------------------------------------------------


def leaves_of(round: int, records: Sequence[Mapping[str, Any]]) -> list[bytes]:
    """The Merkle leaves of a round's acceptance records, in their order."""
    return [
        leaf_hash(
            round,
            r["client"],
            bytes.fromhex(r["digest"]),
            int(r["weight"]),
            bytes.fromhex(r["salt"]),
        )
        for r in records
    ]


# ---- metadata and store names ------------------------------------------------------------------


def encode_meta(meta: Mapping[str, Any]) -> bytes:
    """The bytes of a round's metadata: JSON, sorted keys, no spaces (every party hashes these)."""
    return json.dumps(meta, sort_keys=True, separators=(",", ":")).encode()


def round_meta(
    *,
    task: int,
    round: int,
    secure: str | None,
    rule: str,
    f: int,
    params: Mapping[str, Any],
    pre: Sequence[Any],
    backend: str | None,
    dim: int | None,
    he_context: bytes | None = None,
    keys: Mapping[str, Any] | None = None,
    buckets: Mapping[str, Any] | None = None,
    nodes: Sequence[int] | None = None,
) -> dict[str, Any]:
    """The metadata a round commits (its hash goes on chain): what an audit needs to recompute
    the result bit for bit. ``he_context`` is the digest of the CKKS public context; ``keys``
    the collective decryption of a round under a multiparty key
    (:func:`bcfl_engine.round_decrypt.keys_meta`); ``buckets`` the buckets of a robust one
    (:func:`bcfl_engine.round_decrypt.bucket_meta`); ``nodes`` the number of payloads each
    ingest node accepted, in rank order, for a round over several nodes
    (:mod:`bcfl_engine.round_nodes`: its leaves and rows are node 0's, then node 1's, ...)."""
    meta: dict[str, Any] = {
        "format": FORMAT,
        "digest": DIGEST,
        "signed": SIGNED_TYPE,
        "task": task,
        "round": round,
        "secure": secure,
        "rule": rule,
        "f": f,
        "params": dict(params),
        "pre": list(pre),
        "backend": backend,
        "dim": dim,
    }
    if he_context is not None:
        meta["he_context"] = he_context.hex()
    if keys is not None:
        meta["keys"] = dict(keys)
    if buckets is not None:
        meta["buckets"] = dict(buckets)
    if nodes is not None:
        meta["nodes"] = [int(n) for n in nodes]
    return meta


def task_key(chain_id: int, registry: str | bytes, task: int, origin: bytes) -> str:
    """The store's folder name of ``task``: ``<task>-<chain id>-<registry>-<origin[:8]>``.

    ``origin`` is the hash of the block that created the task: two deployments of the same
    registry at the same address (a fresh embedded chain, a restarted dev node) differ there,
    so their rounds never share records; the same task on the same chain always maps here, so
    a restarted aggregator resumes.
    """
    if isinstance(task, bool) or not isinstance(task, int) or task < 0:
        raise InvalidArgument(f"task must be an int >= 0; got {task!r}")
    if isinstance(chain_id, bool) or not isinstance(chain_id, int) or chain_id < 0:
        raise InvalidArgument(f"chain_id must be an int >= 0; got {chain_id!r}")
    if not isinstance(origin, (bytes, bytearray)) or len(origin) != 32:
        raise InvalidArgument(f"origin must be a 32-byte block hash; got {origin!r}")
    return (
        f"{task}-{chain_id}-{address_bytes(registry, 'registry').hex()}-{bytes(origin[:8]).hex()}"
    )


__all__ = [
    "DIGEST",
    "FORMAT",
    "MAX_WEIGHT",
    "READABLE",
    "SIGNED_FIELDS",
    "SIGNED_TYPE",
    "Payload",
    "check_acceptance",
    "check_meta",
    "check_round_record",
    "check_weight",
    "decode_update",
    "digest_function",
    "eip712_types",
    "encode_meta",
    "encode_update",
    "leaf_hash",
    "leaves_of",
    "meta_hash",
    "payload_digest",
    "round_meta",
    "sign_payload",
    "task_key",
    "update_view",
]
