"""Client payload signatures: EIP-712 over (task, round, digest, weight); every rejection is typed."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("eth_account", reason="the chain extra provides eth-account")

from eth_account import Account

from bcfl_engine.chain import PayloadDomain, SignedPayload, sign_payload, verify_payload
from bcfl_engine.chain.errors import (
    BadSignature,
    DigestMismatch,
    NotParticipant,
    ReplayedPayload,
    UnsignedPayload,
)
from bcfl_engine.errors import InvalidArgument, InvalidWeight, PayloadError
from bcfl_engine.protocol import MAX_WEIGHT, SIGNED_TYPE
from bcfl_engine.updates import keccak256

KEYS = [keccak256(f"client {i}".encode()) for i in range(4)]
ADDRS = [Account.from_key(k).address for k in KEYS]
DOMAIN = PayloadDomain(chain_id=31337, registry="0x" + "ab" * 20)
DATA = b"model update bytes"


def signed(
    i: int = 0, task: int = 7, round: int = 3, domain: PayloadDomain = DOMAIN, weight: int = 1
) -> SignedPayload:
    return sign_payload(
        KEYS[i], task=task, round=round, digest=keccak256(DATA), domain=domain, weight=weight
    )


def check(p: SignedPayload, participants: list[str] = ADDRS[:3], **kw: object) -> str:
    args: dict = {
        "task": 7,
        "round": 3,
        "participants": participants,
        "domain": DOMAIN,
        "data": DATA,
    }
    return verify_payload(p, **{**args, **kw})


def test_a_valid_payload_returns_its_signer() -> None:
    p = signed(1)
    assert p.client == ADDRS[1] and len(p.signature or b"") == 65
    assert check(p) == ADDRS[1].lower()
    # A set of 20-byte addresses is accepted as is (the O(1) path).
    assert check(p, participants={bytes.fromhex(a[2:]) for a in ADDRS[:3]}) == ADDRS[1].lower()


def test_the_signature_is_eip712_typed_data() -> None:
    # Recomputed by hand: "\x19\x01" || domainSeparator || hashStruct(Payload), so a contract
    # (ecrecover) or a wallet can check what the engine checks.
    def word(x: int | bytes) -> bytes:
        return x.to_bytes(32, "big") if isinstance(x, int) else x.rjust(32, b"\0")

    dom_type = keccak256(
        b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
    )
    separator = keccak256(
        dom_type
        + keccak256(b"bcfl_engine")
        + keccak256(b"1")
        + word(31337)
        + word(bytes.fromhex("ab" * 20))
    )
    struct = keccak256(
        keccak256(b"Payload(uint256 task,uint256 round,bytes32 digest,uint64 weight)")
        + word(7)
        + word(3)
        + keccak256(DATA)
        + word(2**64 - 1)
    )
    digest = keccak256(b"\x19\x01" + separator + struct)
    p = signed(2, weight=2**64 - 1)
    assert Account._recover_hash(digest, signature=p.signature) == ADDRS[2]
    assert SIGNED_TYPE == "Payload(uint256 task,uint256 round,bytes32 digest,uint64 weight)"


@pytest.mark.parametrize("sig", [None, b""], ids=["none", "empty"])
def test_unsigned_payloads_are_rejected(sig: bytes | None) -> None:
    with pytest.raises(UnsignedPayload, match="no signature"):
        check(dataclasses.replace(signed(), signature=sig))


def test_mis_signed_payloads_are_rejected() -> None:
    # Signed by client 1, claiming to be client 0.
    with pytest.raises(BadSignature, match="not by the claimed client"):
        check(dataclasses.replace(signed(1), client=ADDRS[0]))
    # The digest was changed after signing.
    with pytest.raises(BadSignature, match="not by the claimed client"):
        check(dataclasses.replace(signed(0), digest=keccak256(b"other")), data=None)
    # Signed for another registry or chain: the domain binds it.
    other = PayloadDomain(chain_id=1, registry=DOMAIN.registry)
    with pytest.raises(BadSignature):
        check(signed(0, domain=other))
    with pytest.raises(BadSignature, match="65 bytes"):
        check(dataclasses.replace(signed(), signature=b"\1" * 64))
    with pytest.raises(BadSignature):
        check(dataclasses.replace(signed(), signature=b"\xff" * 65))


def test_replays_from_another_round_or_task_are_rejected() -> None:
    with pytest.raises(ReplayedPayload, match="signed for task 7 round 2; expected task 7 round 3"):
        check(signed(round=2))
    with pytest.raises(ReplayedPayload, match="task 8 round 3"):
        check(signed(task=8))
    # Editing the round field of an old payload breaks its signature.
    with pytest.raises(BadSignature):
        check(dataclasses.replace(signed(round=2), round=3))


def test_non_participants_and_tampered_bytes_are_rejected() -> None:
    with pytest.raises(NotParticipant, match="not among the task's 3 participants"):
        check(signed(3))
    with pytest.raises(DigestMismatch, match="signed digest"):
        check(signed(0), data=DATA + b"!")


def test_every_rejection_is_a_payload_error() -> None:
    for cls in (UnsignedPayload, BadSignature, ReplayedPayload, NotParticipant, DigestMismatch):
        assert issubclass(cls, PayloadError) and issubclass(cls, ValueError)


def test_the_weight_is_signed() -> None:
    p = signed(1, weight=40)
    assert p.weight == 40 and check(p) == ADDRS[1].lower()
    with pytest.raises(BadSignature, match="weight 41"):
        check(dataclasses.replace(p, weight=41))  # reweighted after signing


@pytest.mark.parametrize(
    "weight",
    [0, -1, MAX_WEIGHT + 1, 2**256, 2**1100, True, 1.0, "1", None],
    ids=["0", "neg", "2^64", "2^256", "2^1100", "bool", "float", "str", "none"],
)
def test_weights_out_of_bounds_are_typed_errors(weight: object) -> None:
    with pytest.raises(InvalidWeight, match="weight"):
        signed(weight=weight)  # type: ignore[arg-type]
    with pytest.raises(InvalidWeight, match="weight"):
        check(dataclasses.replace(signed(), weight=weight))
    assert issubclass(InvalidWeight, InvalidArgument)


def test_the_largest_weight_signs_and_verifies() -> None:
    assert check(signed(0, weight=MAX_WEIGHT)) == ADDRS[0].lower()
