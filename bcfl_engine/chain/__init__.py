"""On-chain round proofs: Merkle trees, the ledger client, the embedded chain, signed payloads.

:mod:`.merkle` needs only keccak (pycryptodome); :class:`Ledger` and the signatures import web3,
eth-tester and eth-account on first use (``pip install 'bcfl_engine[chain]'``).
"""

from __future__ import annotations

from .devnode import AnvilNode
from .keys import KeyEpochRecord
from .ledger import Ledger
from .merkle import (
    MerkleTree,
    contribution_leaf,
    hash_pair,
    key_party_leaf,
    leaf_hash,
    participant_leaf,
    process_proof,
    round_root,
    verify_proof,
)
from .quorum import Conflict, QuorumInfo, RoundStatus, RoundTuple, replica_order
from .records import Receipt, RoundRecord, TaskInfo, meta_hash, tuple_id
from .seals import SealRecord
from .signing import (
    PayloadDomain,
    SignedPayload,
    eip712_digest,
    sign_payload,
    verify_payload,
    verify_payloads,
)

__all__ = [
    "AnvilNode",
    "Conflict",
    "KeyEpochRecord",
    "Ledger",
    "MerkleTree",
    "PayloadDomain",
    "QuorumInfo",
    "Receipt",
    "RoundRecord",
    "RoundStatus",
    "RoundTuple",
    "SealRecord",
    "SignedPayload",
    "TaskInfo",
    "contribution_leaf",
    "eip712_digest",
    "hash_pair",
    "key_party_leaf",
    "leaf_hash",
    "meta_hash",
    "participant_leaf",
    "process_proof",
    "replica_order",
    "round_root",
    "sign_payload",
    "tuple_id",
    "verify_payload",
    "verify_payloads",
    "verify_proof",
]
