"""Client payload signatures: EIP-712 over (task, round, digest, weight); every rejection is typed."""

from __future__ import annotations

import dataclasses
import random

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
from bcfl_engine.protocol import MAX_WEIGHT, SIGNED_TYPE, payload_digest
from bcfl_engine.updates import keccak256

KEYS = [keccak256(f"client {i}".encode()) for i in range(4)]
ADDRS = [Account.from_key(k).address for k in KEYS]
DOMAIN = PayloadDomain(chain_id=31337, registry="0x" + "ab" * 20)
DATA = b"model update bytes"


def signed(
    i: int = 0, task: int = 7, round: int = 3, domain: PayloadDomain = DOMAIN, weight: int = 1
) -> SignedPayload:
    return sign_payload(
        KEYS[i], task=task, round=round, digest=payload_digest(DATA), domain=domain, weight=weight
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
        + payload_digest(DATA)
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


# ---- libsecp256k1 recovery against eth-account ----------------------------------------------

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


def high_s(sig: bytes) -> bytes:
    """The other valid signature of the same message: ``(r, n - s)`` with v flipped."""
    s = int.from_bytes(sig[32:64], "big")
    return sig[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - sig[64]])


@pytest.mark.parametrize(
    "task, round, weight, chain_id",
    [(7, 3, 1, 31337), (0, 1, MAX_WEIGHT, 1), (2**255, 2**256 - 1, 12345, 2**64)],
    ids=["typical", "zero-task-max-weight", "huge-words"],
)
def test_our_eip712_digest_is_eth_accounts_byte_for_byte(
    task: int, round: int, weight: int, chain_id: int
) -> None:
    from eth_account.messages import _hash_eip191_message, encode_typed_data

    from bcfl_engine.chain import eip712_digest
    from bcfl_engine.protocol import eip712_types

    domain = PayloadDomain(chain_id=chain_id, registry="0x" + "cd" * 20)
    digest = payload_digest(b"x" * 100)
    theirs = _hash_eip191_message(
        encode_typed_data(
            domain_data=domain.as_eip712(),
            message_types=eip712_types(),
            message_data={"task": task, "round": round, "digest": digest, "weight": weight},
        )
    )
    assert eip712_digest(domain, task, round, digest, weight) == theirs
    assert eip712_digest(domain, task, round, digest, weight) == theirs  # cached separator
    with pytest.raises(InvalidArgument, match="uint64"):
        eip712_digest(domain, task, round, digest, 2**64)


def _variants(sig: bytes) -> dict[str, bytes]:
    flip = bytearray(sig)
    flip[5] ^= 0x40
    flip_s = bytearray(sig)
    flip_s[40] ^= 0x01
    return {
        "valid": sig,
        "v-0-or-1": sig[:64] + bytes([sig[64] - 27]),
        "tampered-r": bytes(flip),
        "tampered-s": bytes(flip_s),
        "v-2": sig[:64] + b"\x02",
        "v-26": sig[:64] + b"\x1a",
        "v-29": sig[:64] + b"\x1d",
        "r-zero": bytes(32) + sig[32:],
        "s-zero": sig[:32] + bytes(32) + sig[64:],
        "r-at-n": SECP256K1_N.to_bytes(32, "big") + sig[32:],
        "short": sig[:64],
        "long": sig + b"\x00",
    }


@pytest.mark.parametrize("name", list(_variants(b"\x01" * 64 + b"\x1b")))
def test_recovery_agrees_with_eth_account(name: str) -> None:
    from bcfl_engine.chain.signing import _recover, eip712_digest

    p = signed(1, weight=5)
    sig = _variants(p.signature or b"")[name]
    message = eip712_digest(DOMAIN, 7, 3, p.digest, 5)
    try:
        theirs: str | None = Account._recover_hash(message, signature=sig).lower()
    except Exception:
        theirs = None
    try:
        ours: str | None = "0x" + _recover(message, sig, "client").hex()
    except BadSignature:
        ours = None
    assert ours == theirs
    # verify_payload accepts exactly when eth-account recovers the claimed client.
    q = dataclasses.replace(p, signature=sig)
    if theirs == ADDRS[1].lower():
        assert check(q) == theirs
    else:
        with pytest.raises(BadSignature):
            check(q)


def test_a_high_s_signature_is_rejected() -> None:
    # eth-account's recover_message accepts the high-s twin (same signer); the engine keeps
    # EIP-2's low-s rule, as OpenZeppelin's ECDSA.recover does: one signature per payload.
    p = signed(2)
    sig = p.signature or b""
    assert int.from_bytes(sig[32:64], "big") <= SECP256K1_N // 2  # eth-account signs low-s
    twin = high_s(sig)
    from bcfl_engine.chain.signing import eip712_digest

    message = eip712_digest(DOMAIN, 7, 3, p.digest, 1)
    assert Account._recover_hash(message, signature=twin) == ADDRS[2]
    with pytest.raises(BadSignature, match="high s"):
        check(dataclasses.replace(p, signature=twin))
    assert check(p) == ADDRS[2].lower()


def _outcome(fn, *args, **kw) -> object:
    try:
        return fn(*args, **kw)
    except Exception as exc:
        return (type(exc), str(exc))


def test_the_batch_check_answers_as_the_single_one() -> None:
    from bcfl_engine.chain import verify_payloads

    good = [signed(i, weight=i + 1) for i in range(3)]
    burst = [
        *good,
        signed(3),  # not a participant
        dataclasses.replace(good[0], signature=high_s(good[0].signature or b"")),
        dataclasses.replace(good[1], signature=None),
        dataclasses.replace(good[1], weight=99),  # not the signed weight
        dataclasses.replace(good[2], weight=0),  # out of bounds: InvalidWeight
        signed(0, round=2),  # replayed
        dataclasses.replace(good[2], signature=(good[2].signature or b"")[:64]),
    ]
    data = [DATA] * len(burst)
    data[1] = DATA + b"!"  # tampered bytes: DigestMismatch for that one only
    data[2] = None
    for workers in (None, 1, 4):
        got = verify_payloads(
            burst,
            task=7,
            round=3,
            participants=ADDRS[:3],
            domain=DOMAIN,
            data=data,
            workers=workers,
        )
        assert len(got) == len(burst)
        for p, d, g in zip(burst, data, got, strict=True):
            want = _outcome(check, p, data=d)
            assert (g if isinstance(g, str) else (type(g), str(g))) == want
    kinds = [type(g).__name__ if not isinstance(g, str) else "ok" for g in got]
    assert kinds == [
        "ok",
        "DigestMismatch",
        "ok",
        "NotParticipant",
        "BadSignature",
        "UnsignedPayload",
        "BadSignature",
        "InvalidWeight",
        "ReplayedPayload",
        "BadSignature",
    ]
    assert verify_payloads([], task=7, round=3, participants=ADDRS, domain=DOMAIN) == []
    with pytest.raises(InvalidArgument, match="data holds 1"):
        verify_payloads(good, task=7, round=3, participants=ADDRS, domain=DOMAIN, data=[DATA])


# ---- the native batch recovery ------------------------------------------------------------------


def test_native_keccak256_equals_pycryptodome_at_every_length_around_the_rate() -> None:
    from Crypto.Hash import keccak

    from bcfl_engine import updates
    from bcfl_engine.backends import native

    assert updates._keccak() is native().keccak256  # what the engine hashes with
    rng = random.Random(5)
    for n in [*range(0, 300), 407, 408, 409, 4096, 100_001]:
        data = rng.randbytes(n)
        assert native().keccak256(data) == keccak.new(digest_bits=256, data=data).digest(), n


def _garbage_signatures(rng: random.Random, base: bytes) -> list[bytes]:
    n_order = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    word = lambda v: v.to_bytes(32, "big")  # noqa: E731
    return [
        rng.randbytes(64) + bytes([27]),  # random r, s: often high s, else another signer
        bytes(32) + base[32:],  # r = 0
        word(n_order) + base[32:],  # r = n: out of range
        base[:32] + bytes(32) + base[64:],  # s = 0
        base[:32] + word(n_order // 2) + base[64:],  # s = n/2: low, accepted form
        base[:32] + word(n_order // 2 + 1) + base[64:],  # high s
        base[:64] + bytes([0]),
        base[:64] + bytes([1]),
        base[:64] + bytes([29]),
        b"\xff" * 64 + bytes([28]),
    ]


def test_the_native_batch_answers_as_the_one_at_a_time_check(monkeypatch) -> None:
    from bcfl_engine.chain import signing, verify_payloads

    assert signing.batch_recovery() is not None, signing.batch_recovery_reason()
    rng = random.Random(11)
    good = [signed(i % 3, weight=1 + i) for i in range(12)]
    burst = list(good)
    for g in good[:3]:
        burst += [
            dataclasses.replace(g, signature=s) for s in _garbage_signatures(rng, g.signature)
        ]
    burst += [dataclasses.replace(good[0], weight=2**64 - 1), signed(3)]
    args = {"task": 7, "round": 3, "participants": ADDRS[:3], "domain": DOMAIN}
    fast = verify_payloads(burst, **args)
    monkeypatch.setattr(signing, "batch_recovery", lambda: None)
    slow = verify_payloads(burst, **args)
    outcome = lambda r: r if isinstance(r, str) else (type(r), str(r))  # noqa: E731
    assert [outcome(r) for r in fast] == [outcome(r) for r in slow]
    assert [outcome(r) for r in fast] == [_outcome(check, p, data=None) for p in burst]
    assert sum(isinstance(r, str) for r in fast) >= 12  # the good ones, and nothing is lost
    for threads in (1, 2):
        again = verify_payloads(burst, **args, workers=threads)
        assert [outcome(r) for r in again] == [outcome(r) for r in fast]


def test_native_recovery_checks_its_buffers() -> None:
    from bcfl_engine.backends import native
    from bcfl_engine.chain import signing

    assert signing.batch_recovery() is not None
    with pytest.raises(InvalidArgument, match="96 bytes"):
        native().eip712_recover(b"short", bytes(32), b"", 0)
    with pytest.raises(InvalidArgument, match="multiple of 105"):
        native().eip712_recover(bytes(96), bytes(32), bytes(104), 0)
    assert native().eip712_recover(bytes(96), bytes(32), b"", 0) == b""
