"""Merkle trees that the round registry (``contracts/RoundRegistry.sol``) verifies.

Conventions are OpenZeppelin's ``MerkleProof``: an inner node is keccak256 of its two children
sorted (smaller first), so a proof is a plain list of siblings with no left/right flags; a leaf
is hashed twice from the ABI encoding of its fields,
``keccak256(bytes.concat(keccak256(abi.encode(fields...))))``, so no leaf can pass for an
inner node (a second-preimage attack needs a 64-byte preimage of a 32-byte hash).

Tree shape: levels are built bottom-up by pairing neighbours; an odd node at the end of a level
is carried up unchanged (its proof has no sibling at that level). Any shape verifies, because
the proof carries the siblings and sorted pairs need no positions.

A round's stored root is ``hash_pair(updates_root, contributions_root)`` (see
:func:`round_root`); the ledger appends the other subtree's root to a proof.

Only pycryptodome's keccak is needed: this module works without the ``chain`` extra.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..errors import InvalidArgument
from ..updates import keccak256

ZERO32 = bytes(32)
_UINT256_MAX = (1 << 256) - 1


def _word_uint(value: int, name: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= _UINT256_MAX:
        raise InvalidArgument(f"{name} must be an integer in [0, 2**256); got {value!r}")
    return value.to_bytes(32, "big")


def _word_address(value: str | bytes, name: str) -> bytes:
    raw = address_bytes(value, name)
    return bytes(12) + raw


def _word_bytes32(value: bytes, name: str) -> bytes:
    return as_bytes32(value, name)


def as_bytes32(value: bytes, name: str) -> bytes:
    """``value`` as 32 raw bytes; InvalidArgument otherwise (hex strings are not guessed at)."""
    if not isinstance(value, (bytes, bytearray, memoryview)) or len(value) != 32:
        shown = f"{len(value)} bytes" if isinstance(value, (bytes, bytearray)) else repr(value)
        raise InvalidArgument(f"{name} must be 32 bytes; got {shown}")
    return bytes(value)


def address_bytes(value: str | bytes, name: str = "address") -> bytes:
    """The 20 bytes of an address given as ``0x``-hex (any case) or raw bytes."""
    if isinstance(value, str):
        text = value[2:] if value[:2] in ("0x", "0X") else value
        try:
            raw = bytes.fromhex(text)
        except ValueError:
            raw = b""
    elif isinstance(value, (bytes, bytearray)):
        raw = bytes(value)
    else:
        raw = b""
    if len(raw) != 20:
        raise InvalidArgument(
            f"{name} must be a 20-byte address (0x + 40 hex digits); got {value!r}"
        )
    return raw


def hash_pair(a: bytes, b: bytes) -> bytes:
    """keccak256 of two 32-byte nodes, smaller first (OpenZeppelin's commutative hash)."""
    return keccak256(a + b if a < b else b + a)


def leaf_hash(round: int, client: str | bytes, digest: bytes, weight: int, salt: bytes) -> bytes:
    """The leaf of one client's update in a round's updates tree.

    ``keccak256(bytes.concat(keccak256(abi.encode(uint256 round, address client,
    bytes32 digest, uint256 weight, bytes32 salt))))``.

    Parameters
    ----------
    round : the round number (>= 1 on chain).
    client : the client's address (``0x`` hex or 20 bytes).
    digest : the payload digest (:func:`bcfl_engine.protocol.payload_digest`), 32 bytes.
    weight : the client's integer weight (e.g. its sample count).
    salt : 32 random bytes kept off chain, so a leaf reveals nothing about who took part.
    """
    encoded = (
        _word_uint(round, "round")
        + _word_address(client, "client")
        + _word_bytes32(digest, "digest")
        + _word_uint(weight, "weight")
        + _word_bytes32(salt, "salt")
    )
    return keccak256(keccak256(encoded))


def contribution_leaf(round: int, account: str | bytes, credit: int) -> bytes:
    """The leaf of a participant's credit: ``abi.encode(uint256 round, address account,
    uint256 credit)``, hashed twice (what ``RoundRegistry.claim`` recomputes)."""
    encoded = (
        _word_uint(round, "round")
        + _word_address(account, "account")
        + _word_uint(credit, "credit")
    )
    return keccak256(keccak256(encoded))


def participant_leaf(account: str | bytes) -> bytes:
    """The leaf of a task's participant: ``abi.encode(address account)``, hashed twice."""
    return keccak256(keccak256(_word_address(account, "participant")))


def key_party_leaf(party: int, account: str | bytes, commitment: bytes, threshold: int) -> bytes:
    """The leaf of a multiparty CKKS key party in a key epoch's parties tree:
    ``abi.encode(uint256 party, address account, bytes32 commitment, uint256 threshold)``,
    hashed twice (``threshold``: the parties that must decrypt together)."""
    encoded = (
        _word_uint(party, "party")
        + _word_address(account, "account")
        + _word_bytes32(commitment, "commitment")
        + _word_uint(threshold, "threshold")
    )
    return keccak256(keccak256(encoded))


def process_proof(leaf: bytes, proof: Sequence[bytes]) -> bytes:
    """The root that ``proof`` leads to from ``leaf`` (``MerkleProof.processProof``)."""
    node = as_bytes32(leaf, "leaf")
    for i, sibling in enumerate(proof):
        node = hash_pair(node, as_bytes32(sibling, f"proof[{i}]"))
    return node


def verify_proof(root: bytes, leaf: bytes, proof: Sequence[bytes]) -> bool:
    """True iff ``proof`` leads from ``leaf`` to ``root`` (``MerkleProof.verify``)."""
    return process_proof(leaf, proof) == as_bytes32(root, "root")


def round_root(updates_root: bytes, contributions_root: bytes | None = None) -> bytes:
    """The root a round stores: ``hash_pair(updates_root, contributions_root or 0)``."""
    other = (
        ZERO32
        if contributions_root is None
        else as_bytes32(contributions_root, "contributions_root")
    )
    return hash_pair(as_bytes32(updates_root, "updates_root"), other)


class MerkleTree:
    """A Merkle tree over 32-byte leaves, in the order given.

    ``levels[0]`` are the leaves, ``levels[-1] == [root]``. Building costs ``n - 1`` keccak
    calls; a proof has at most ``ceil(log2 n)`` siblings.

    >>> tree = MerkleTree.from_leaves([leaf_hash(1, "0x" + "11" * 20, bytes(32), 5, bytes(32))])
    >>> tree.proof(0)
    []
    """

    def __init__(self, levels: list[list[bytes]]) -> None:
        self.levels = levels

    @classmethod
    def from_leaves(cls, leaves: Sequence[bytes]) -> MerkleTree:
        """Builds the tree; ``leaves`` are already double-hashed (see :func:`leaf_hash`)."""
        if len(leaves) == 0:
            raise InvalidArgument("a Merkle tree needs at least one leaf; got 0")
        level = [as_bytes32(leaf, f"leaves[{i}]") for i, leaf in enumerate(leaves)]
        levels = [level]
        while len(level) > 1:
            nxt = [hash_pair(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
            if len(level) % 2:
                nxt.append(level[-1])  # odd node out: carried up, no sibling at this level
            levels.append(nxt)
            level = nxt
        return cls(levels)

    @property
    def root(self) -> bytes:
        return self.levels[-1][0]

    @property
    def leaves(self) -> list[bytes]:
        return self.levels[0]

    def __len__(self) -> int:
        return len(self.levels[0])

    def proof(self, index: int) -> list[bytes]:
        """The siblings from leaf ``index`` up to the root."""
        n = len(self)
        if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < n:
            raise InvalidArgument(f"leaf index must be in [0, {n}); got {index!r}")
        proof = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level):
                proof.append(level[sibling])
            index //= 2
        return proof

    def verify(self, index: int, proof: Sequence[bytes]) -> bool:
        """True iff ``proof`` leads from leaf ``index`` to this tree's root."""
        return verify_proof(self.root, self.leaves[index], proof)
