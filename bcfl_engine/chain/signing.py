"""Client authentication: secp256k1 signatures over (task, round, payload digest, weight).

Each client signs its payload's digest and its weight as EIP-712 typed data,
``Payload(uint256 task, uint256 round, bytes32 digest, uint64 weight)``
(:data:`bcfl_engine.protocol.SIGNED_TYPE`, defined there), in the domain
``{name: "bcfl_engine", version: "1", chainId, verifyingContract: registry}``. The domain binds
a signature to one registry on one chain, the fields to one task and round and one weight: a
payload replayed in another round, task or deployment, or sent with another weight, fails. Wallets show typed data to the signer field by field.

The aggregator calls :func:`verify_payload` before a payload enters a batch (or
:func:`verify_payloads` for a burst, on a thread pool): it rejects unsigned, mis-signed,
replayed (other round or task), non-participant and tampered payloads, each with its own
:class:`~bcfl_engine.errors.PayloadError` subclass.

Checking is libsecp256k1's public-key recovery (``coincurve``) over the EIP-712 digest computed
here (:func:`eip712_digest`, the domain separator cached per domain; a test holds it to
eth-account's ``encode_typed_data`` byte for byte): 0.08 ms a signature, 4.4x less than
eth-account's recovery. A signature is ``r || s || v`` with ``v`` in {27, 28} (or {0, 1}) and ``s`` at most
``n / 2`` (EIP-2's low-s rule, as OpenZeppelin's ``ECDSA.recover``): the high-s twin of a valid
signature is rejected, so each signed payload has one signature. Clients sign with eth-account.
"""

from __future__ import annotations

import functools
from collections.abc import Collection, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..errors import BcflError, InvalidArgument, PayloadError
from ..updates import keccak256
from ._deps import need
from .errors import BadSignature, DigestMismatch, NotParticipant, ReplayedPayload, UnsignedPayload
from .merkle import address_bytes, as_bytes32


@dataclass(frozen=True)
class PayloadDomain:
    """Where signatures are valid: one chain id and one registry address."""

    chain_id: int
    registry: str

    def as_eip712(self) -> dict[str, Any]:
        return {
            "name": "bcfl_engine",
            "version": "1",
            "chainId": self.chain_id,
            "verifyingContract": "0x" + address_bytes(self.registry, "registry").hex(),
        }


@dataclass(frozen=True)
class SignedPayload:
    """What a client sends besides its update: who it claims to be and its signature.

    Attributes
    ----------
    task, round : the task id and round the client signed for.
    digest : :func:`~bcfl_engine.protocol.payload_digest` of the payload bytes (32 bytes).
    client : the client's address, ``0x`` hex.
    signature : 65 bytes ``r || s || v``, or None when unsigned.
    weight : the client's weight (its sample count), signed with the digest.
    """

    task: int
    round: int
    digest: bytes
    client: str
    signature: bytes | None
    weight: int = 1


def _signable(domain: PayloadDomain, task: int, round: int, digest: bytes, weight: int) -> Any:
    messages = need("eth_account.messages")
    return messages.encode_typed_data(
        domain_data=domain.as_eip712(),
        message_types=protocol.eip712_types(),
        message_data={"task": task, "round": round, "digest": digest, "weight": weight},
    )


def sign_payload(
    key: bytes | str,
    *,
    task: int,
    round: int,
    digest: bytes,
    domain: PayloadDomain,
    weight: int = 1,
) -> SignedPayload:
    """Signs ``(task, round, digest, weight)`` with the client's private key (32 bytes or hex).

    ``weight`` must be an int in ``[1, 2**64 - 1]`` (InvalidWeight otherwise).
    """
    account = need("eth_account").Account.from_key(key)
    digest = as_bytes32(digest, "digest")
    weight = protocol.check_weight(weight)
    signed = account.sign_message(_signable(domain, task, round, digest, weight))
    return SignedPayload(task, round, digest, account.address, bytes(signed.signature), weight)


def verify_payload(
    payload: SignedPayload,
    *,
    task: int,
    round: int,
    participants: Collection[str | bytes],
    domain: PayloadDomain,
    data: bytes | None = None,
) -> str:
    """Checks a client's payload before it enters round ``round`` of ``task``.

    Parameters
    ----------
    payload : the client's signed fields.
    task, round : the round being collected.
    participants : addresses allowed to send (the task's participants); a set of 20-byte
        addresses makes the check O(1) per payload.
    domain : the chain and registry signatures are bound to.
    data : the payload bytes, if at hand: their digest must equal ``payload.digest``.

    Returns
    -------
    The client's address (``0x``-hex, lower case), recovered from the signature.

    Raises
    ------
    UnsignedPayload, ReplayedPayload, BadSignature (also when the weight is not the one
    signed, and for a high-s or malformed signature), NotParticipant, DigestMismatch;
    InvalidWeight for a weight out of bounds
    """
    weight = protocol.check_weight(payload.weight, f"weight of {payload.client}")
    if not payload.signature:
        raise UnsignedPayload(f"payload from {payload.client} carries no signature")
    if payload.task != task or payload.round != round:
        raise ReplayedPayload(
            f"payload from {payload.client} was signed for task {payload.task} round "
            f"{payload.round}; expected task {task} round {round}"
        )
    claimed = address_bytes(payload.client, "payload.client")
    digest = as_bytes32(payload.digest, "payload.digest")
    signer = _recover(
        eip712_digest(domain, payload.task, payload.round, digest, weight),
        payload.signature,
        payload.client,
    )
    if signer != claimed:
        raise BadSignature(
            f"signature over task {task} round {round} (digest, weight {weight}) was made by "
            f"0x{signer.hex()}, not by the claimed client 0x{claimed.hex()}: another signer, "
            "or the payload or its weight changed after signing"
        )
    # A set of 20-byte addresses answers in O(1); anything else is normalized first.
    if not (isinstance(participants, (set, frozenset)) and signer in participants):
        allowed = {address_bytes(p, "participant") for p in participants}
        if signer not in allowed:
            raise NotParticipant(
                f"0x{signer.hex()} is not among the task's {len(allowed)} participants"
            )
    if data is not None and (got := protocol.payload_digest(data)) != digest:
        raise DigestMismatch(
            f"payload bytes from 0x{signer.hex()} hash to 0x{got.hex()}; "
            f"signed digest is 0x{payload.digest.hex()}"
        )
    return "0x" + signer.hex()


def verify_payloads(
    payloads: Sequence[SignedPayload],
    *,
    task: int,
    round: int,
    participants: Collection[str | bytes],
    domain: PayloadDomain,
    data: Sequence[bytes | None] | None = None,
    workers: int | None = None,
) -> list[str | BcflError]:
    """:func:`verify_payload` of each payload of a burst, on a thread pool.

    libsecp256k1 and BLAKE3 release the GIL, so the recoveries (and the digests of ``data``)
    run in parallel. ``data``, when given, holds each payload's bytes (or None) in the same
    order. ``workers``: the pool's size (default: the executor's; 1 checks in this thread).
    On 2 cores a pool does not pay yet at ~0.25 ms a 1 MiB payload (0.9x of a loop over
    :func:`verify_payload`): it is for machines with cores to spare.

    Returns
    -------
    One result per payload, in order: the client's address (as :func:`verify_payload`
    returns it) or the typed error that payload alone raised (a PayloadError subclass, or
    InvalidWeight); a bad payload rejects only itself.
    """
    if data is not None and len(data) != len(payloads):
        raise InvalidArgument(f"data holds {len(data)} payloads; expected {len(payloads)}")
    if not (
        isinstance(participants, (set, frozenset))
        and all(isinstance(p, bytes) for p in participants)
    ):
        participants = frozenset(address_bytes(p, "participant") for p in participants)

    def one(i: int) -> str | BcflError:
        try:
            return verify_payload(
                payloads[i],
                task=task,
                round=round,
                participants=participants,
                domain=domain,
                data=None if data is None else data[i],
            )
        except (PayloadError, InvalidArgument) as exc:  # that payload's own fault
            return exc

    if len(payloads) <= 1 or workers == 1:
        return [one(i) for i in range(len(payloads))]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(one, range(len(payloads))))


# ---- EIP-712 and recovery, by hand -------------------------------------------------------------

_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_DOMAIN_TYPE = keccak256(
    b"EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
)


@functools.cache
def _payload_type() -> bytes:
    """``typeHash`` of :data:`~bcfl_engine.protocol.SIGNED_TYPE` (read on first use: protocol
    imports this package)."""
    return keccak256(protocol.SIGNED_TYPE.encode())


def _word(value: int, what: str, bits: int = 256) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**bits:
        raise InvalidArgument(f"{what} must be a uint{bits}; got {value!r:.80}")
    return value.to_bytes(32, "big")


@functools.lru_cache(maxsize=64)
def domain_separator(domain: PayloadDomain) -> bytes:
    """EIP-712 ``hashStruct(EIP712Domain)`` of ``domain`` (cached per domain)."""
    d = domain.as_eip712()
    return keccak256(
        _DOMAIN_TYPE
        + keccak256(d["name"].encode())
        + keccak256(d["version"].encode())
        + _word(d["chainId"], "chainId")
        + bytes(12)
        + bytes.fromhex(d["verifyingContract"][2:])
    )


def eip712_digest(
    domain: PayloadDomain, task: int, round: int, digest: bytes, weight: int
) -> bytes:
    """The 32 bytes a client signs: ``keccak256("\\x19\\x01" || domainSeparator ||
    hashStruct(Payload(task, round, digest, weight)))``, as eth-account's
    ``encode_typed_data`` with :func:`~bcfl_engine.protocol.eip712_types`."""
    struct = keccak256(
        _payload_type()
        + _word(task, "task")
        + _word(round, "round")
        + as_bytes32(digest, "digest")
        + _word(weight, "weight", 64)
    )
    return keccak256(b"\x19\x01" + domain_separator(domain) + struct)


def _recover(message: bytes, signature: bytes, who: str) -> bytes:
    """The 20-byte address that made the 65-byte ``signature`` of ``message`` (libsecp256k1);
    BadSignature for a signature that does not parse, has a high ``s`` or recovers nothing."""
    if len(signature) != 65:
        raise BadSignature(f"signature must be 65 bytes (r, s, v); got {len(signature)}")
    v = signature[64]
    if v not in (0, 1, 27, 28):
        raise BadSignature(f"signature from {who}: v must be 27 or 28 (or 0 or 1); got {v}")
    s = int.from_bytes(signature[32:64], "big")
    if s > _SECP256K1_N // 2:
        raise BadSignature(
            f"signature from {who} has a high s (above n/2): only the low-s form is accepted"
        )
    try:
        key = need("coincurve").PublicKey.from_signature_and_message(
            bytes(signature[:64]) + bytes([v % 27]), message, hasher=None
        )
    except Exception as exc:  # libsecp256k1 rejects r or s out of range, or no point
        raise BadSignature(f"signature from {who} does not parse: {exc}") from exc
    return keccak256(key.format(compressed=False)[1:])[12:]
