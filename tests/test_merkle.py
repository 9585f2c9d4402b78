"""Merkle trees and leaves: OpenZeppelin MerkleProof semantics, checked in Python.

The leaf encodings are checked against eth_abi (an independent ABI encoder); roots and proofs
of every tree size below are checked by the contract itself in test_chain_ledger.py.
"""

from __future__ import annotations

import math
import random

import pytest

from bcfl_engine.chain import (
    MerkleTree,
    contribution_leaf,
    hash_pair,
    leaf_hash,
    participant_leaf,
    process_proof,
    round_root,
    verify_proof,
)
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.updates import keccak256

SIZES = [1, 2, 3, 4, 5, 7, 8, 13, 31, 64, 97, 128, 255, 1000]


def random_leaves(n: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [rng.randbytes(32) for _ in range(n)]


def flip_bit(b: bytes, bit: int = 0) -> bytes:
    return bytes([b[0] ^ (1 << bit)]) + b[1:]


def test_leaf_encodings_match_abi_encode() -> None:
    eth_abi = pytest.importorskip("eth_abi", reason="eth_abi ships with the chain extra")
    client, digest, salt = "0x" + "5a" * 20, bytes(range(32)), bytes(range(32, 64))
    enc = eth_abi.encode(
        ["uint256", "address", "bytes32", "uint256", "bytes32"], [7, client, digest, 12345, salt]
    )
    assert leaf_hash(7, client, digest, 12345, salt) == keccak256(keccak256(enc))
    enc = eth_abi.encode(["uint256", "address", "uint256"], [3, client, 2**200])
    assert contribution_leaf(3, client, 2**200) == keccak256(keccak256(enc))
    assert participant_leaf(client) == keccak256(keccak256(eth_abi.encode(["address"], [client])))
    # Address case and form do not matter: the leaf is of its 20 bytes.
    assert participant_leaf(client.upper().replace("0X", "0x")) == participant_leaf(
        bytes.fromhex("5a" * 20)
    )


def test_hash_pair_is_commutative_and_sorted() -> None:
    a, b = b"\x01" * 32, b"\x02" * 32
    assert hash_pair(a, b) == hash_pair(b, a) == keccak256(a + b)


def test_small_trees_have_the_expected_shape() -> None:
    l0, l1, l2 = random_leaves(3, seed=1)
    assert MerkleTree.from_leaves([l0]).root == l0
    assert MerkleTree.from_leaves([l0, l1]).root == hash_pair(l0, l1)
    tree = MerkleTree.from_leaves([l0, l1, l2])
    assert tree.root == hash_pair(hash_pair(l0, l1), l2)  # odd leaf carried up
    assert tree.proof(2) == [hash_pair(l0, l1)]
    assert tree.proof(0) == [l1, l2]


@pytest.mark.parametrize("n", SIZES, ids=[f"n{n}" for n in SIZES])
def test_every_proof_verifies_and_alterations_fail(n: int) -> None:
    leaves = random_leaves(n, seed=n)
    tree = MerkleTree.from_leaves(leaves)
    assert len(tree) == n and tree.leaves == leaves
    depth = math.ceil(math.log2(n)) if n > 1 else 0
    for i in range(n):
        proof = tree.proof(i)
        assert len(proof) <= depth
        assert verify_proof(tree.root, leaves[i], proof), f"leaf {i} of {n}"
    rng = random.Random(n)
    for i in rng.sample(range(n), min(n, 20)):
        proof = tree.proof(i)
        assert not verify_proof(tree.root, flip_bit(leaves[i]), proof)
        if proof:
            k = rng.randrange(len(proof))
            bad = [*proof[:k], flip_bit(proof[k], 7), *proof[k + 1 :]]
            assert not verify_proof(tree.root, leaves[i], bad)
            assert not verify_proof(tree.root, leaves[i], proof[:-1])
            assert not verify_proof(tree.root, leaves[i], [])
        if n > 1:
            j = (i + 1) % n
            assert not verify_proof(tree.root, leaves[j], proof) or leaves[j] == leaves[i]


def test_round_root_covers_both_subtrees() -> None:
    updates = MerkleTree.from_leaves(random_leaves(5, seed=2))
    credits = MerkleTree.from_leaves(random_leaves(4, seed=3))
    root = round_root(updates.root, credits.root)
    assert root == hash_pair(updates.root, credits.root)
    assert process_proof(updates.leaves[3], [*updates.proof(3), credits.root]) == root
    assert process_proof(credits.leaves[1], [*credits.proof(1), updates.root]) == root
    assert round_root(updates.root) == hash_pair(updates.root, bytes(32))


def test_bad_input_is_rejected_with_what_was_expected() -> None:
    with pytest.raises(InvalidArgument, match="at least one leaf; got 0"):
        MerkleTree.from_leaves([])
    with pytest.raises(InvalidArgument, match=r"leaves\[1\] must be 32 bytes; got 31 bytes"):
        MerkleTree.from_leaves([bytes(32), bytes(31)])
    with pytest.raises(InvalidArgument, match=r"must be 32 bytes"):
        MerkleTree.from_leaves(["00" * 32])  # type: ignore[list-item]
    tree = MerkleTree.from_leaves(random_leaves(3, seed=4))
    with pytest.raises(InvalidArgument, match=r"leaf index must be in \[0, 3\); got 3"):
        tree.proof(3)
    with pytest.raises(InvalidArgument, match="20-byte address"):
        leaf_hash(1, "0x1234", bytes(32), 1, bytes(32))
    with pytest.raises(InvalidArgument, match=r"weight must be an integer in \[0, 2\*\*256\)"):
        leaf_hash(1, "0x" + "11" * 20, bytes(32), -1, bytes(32))
    with pytest.raises(InvalidArgument, match="weight must be an integer"):
        leaf_hash(1, "0x" + "11" * 20, bytes(32), 1.5, bytes(32))  # type: ignore[arg-type]
