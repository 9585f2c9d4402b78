"""Client authentication: secp256k1 signatures over (task, round, payload digest, weight).

Each client signs its payload's digest and its weight as EIP-712 typed data,
``Payload(uint256 task, uint256 round, bytes32 digest, uint64 weight)``
(:data:`bcfl_engine.protocol.SIGNED_TYPE`, defined there), in the domain
``{name: "bcfl_engine", version: "1", chainId, verifyingContract: registry}``. The domain binds
a signature to one registry on one chain, the fields to one task and round and one weight: a
payload replayed in another round, task or deployment, or sent with another weight, fails. Wallets show typed data to the signer field by field.

The aggregator calls :func:`verify_payload` before a payload enters a batch (or
:func:`verify_payloads` for a burst, recovered natively on all cores): it rejects unsigned, mis-signed,
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
    claimed, digest, weight = _fields(payload, task, round)
    message = eip712_digest(domain, payload.task, payload.round, digest, weight)
    signer = _recover(message, payload.signature or b"", payload.client)
    return _accept(payload, claimed, signer, participants, data)


def _fields(payload: SignedPayload, task: int, round: int) -> tuple[bytes, bytes, int]:
    """What is checked before any recovery: (claimed address, digest, weight); the signature's
    form too (:func:`_signature_form`)."""
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
    _signature_form(payload.signature, payload.client)
    return claimed, digest, weight


def _accept(
    payload: SignedPayload,
    claimed: bytes,
    signer: bytes,
    participants: Collection[str | bytes],
    data: bytes | None,
) -> str:
    """What is checked after the recovery: the signer, its membership, the bytes' digest."""
    if signer != claimed:
        raise BadSignature(
            f"signature over task {payload.task} round {payload.round} (digest, weight "
            f"{payload.weight}) was made by 0x{signer.hex()}, not by the claimed client "
            f"0x{claimed.hex()}: another signer, or the payload or its weight changed after signing"
        )
    # A set of 20-byte addresses answers in O(1); anything else is normalized first.
    if not (isinstance(participants, (set, frozenset)) and signer in participants):
        allowed = {address_bytes(p, "participant") for p in participants}
        if signer not in allowed:
            raise NotParticipant(
                f"0x{signer.hex()} is not among the task's {len(allowed)} participants"
            )
    if data is not None and (got := protocol.payload_digest(data)) != payload.digest:
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
    """:func:`verify_payload` of each payload of a burst, the recoveries in one native call.

    coincurve holds the GIL while it recovers a key, so threads do not help it; the C++
    extension (when built) computes the EIP-712 digests and recovers the signers with the same
    libsecp256k1 (coincurve's shared object, opened by path) on all cores without the GIL
    (:func:`batch_recovery`). Without it, each payload goes through :func:`verify_payload`.
    ``data``, when given, holds each payload's bytes (or None) in the same order; ``workers``
    caps the native threads (None: every core).

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
    native = batch_recovery() if len(payloads) > 1 else None
    results: list[str | BcflError | None] = [None] * len(payloads)
    if native is None:
        for i, p in enumerate(payloads):
            try:
                results[i] = verify_payload(
                    p,
                    task=task,
                    round=round,
                    participants=participants,
                    domain=domain,
                    data=None if data is None else data[i],
                )
            except (PayloadError, InvalidArgument) as exc:  # that payload's own fault
                results[i] = exc
        return results  # type: ignore[return-value]
    todo: list[tuple[int, bytes]] = []
    records = bytearray()
    for i, p in enumerate(payloads):
        try:
            claimed, digest, weight = _fields(p, task, round)
        except (PayloadError, InvalidArgument) as exc:
            results[i] = exc
            continue
        todo.append((i, claimed))
        records += digest + weight.to_bytes(8, "big") + bytes(p.signature or b"")
    head = _payload_type() + _word(task, "task") + _word(round, "round")
    out = native.eip712_recover(head, domain_separator(domain), bytes(records), workers or 0)
    for j, (i, claimed) in enumerate(todo):
        p, status = payloads[i], out[21 * j]
        try:
            if status:  # the form was checked above: r or s out of range, or no key
                raise _unrecoverable(p.client)
            signer = bytes(out[21 * j + 1 : 21 * j + 21])
            results[i] = _accept(
                p, claimed, signer, participants, None if data is None else data[i]
            )
        except PayloadError as exc:
            results[i] = exc
    return results  # type: ignore[return-value]


@functools.cache
def batch_recovery() -> Any | None:
    """The C++ extension with libsecp256k1 loaded for batch recovery, or None (then
    :func:`batch_recovery_reason` says why)."""
    return None if batch_recovery_reason() else native_module()


@functools.cache
def batch_recovery_reason() -> str | None:
    """Why signatures are recovered one at a time in Python (None: in batches, natively)."""
    from ..backends import _load_native

    mod, why = _load_native()
    if mod is None:
        return why
    try:
        import coincurve._libsecp256k1 as lib  # the shared object that exports libsecp256k1
    except ImportError as exc:
        return f"coincurve not importable ({exc})"
    return mod.secp256k1_load(lib.__file__) or None


def signatures_line() -> str:
    """One line for ``bcfl info``: how a burst's signatures are recovered here."""
    why = batch_recovery_reason()
    if why is None:
        return "signatures: native batch recovery (libsecp256k1 through the C++ extension)"
    return f"signatures: one at a time in Python (coincurve): {why}"


def native_module() -> Any:
    from ..backends import native

    return native()


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


def _signature_form(signature: bytes, who: str) -> None:
    """BadSignature unless ``signature`` is 65 bytes ``r || s || v``, ``v`` in {0, 1, 27, 28}
    and ``s`` at most ``n / 2`` (the low-s rule, EIP-2)."""
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


def _unrecoverable(who: str) -> BadSignature:
    return BadSignature(
        f"signature from {who} does not parse or recovers no public key (r or s out of range)"
    )


def _recover(message: bytes, signature: bytes, who: str) -> bytes:
    """The 20-byte address that made the 65-byte ``signature`` of ``message`` (libsecp256k1);
    BadSignature for a signature that does not parse, has a high ``s`` or recovers nothing."""
    _signature_form(signature, who)
    try:
        key = need("coincurve").PublicKey.from_signature_and_message(
            bytes(signature[:64]) + bytes([signature[64] % 27]), message, hasher=None
        )
    except Exception as exc:  # libsecp256k1 rejects r or s out of range, or no point
        raise _unrecoverable(who) from exc
    return keccak256(key.format(compressed=False)[1:])[12:]
