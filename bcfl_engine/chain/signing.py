"""Client authentication: secp256k1 signatures over (task, round, payload digest, weight).

Each client signs its payload's digest and its weight as EIP-712 typed data,
``Payload(uint256 task, uint256 round, bytes32 digest, uint64 weight)``
(:data:`bcfl_engine.protocol.SIGNED_TYPE`, defined there), in the domain
``{name: "bcfl_engine", version: "1", chainId, verifyingContract: registry}``. The domain binds
a signature to one registry on one chain, the fields to one task and round and one weight: a
payload replayed in another round, task or deployment, or sent with another weight, fails. Wallets show typed data to the signer field by field.

The aggregator calls :func:`verify_payload` before a payload enters a batch: it rejects
unsigned, mis-signed, replayed (other round or task), non-participant and tampered payloads,
each with its own :class:`~bcfl_engine.errors.PayloadError` subclass.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass
from typing import Any

from .. import protocol
from ..errors import InvalidArgument
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
    signed), NotParticipant, DigestMismatch; InvalidWeight for a weight out of bounds
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
    if len(payload.signature) != 65:
        raise BadSignature(f"signature must be 65 bytes (r, s, v); got {len(payload.signature)}")
    try:
        recovered = need("eth_account").Account.recover_message(
            _signable(
                domain,
                payload.task,
                payload.round,
                as_bytes32(payload.digest, "payload.digest"),
                weight,
            ),
            signature=payload.signature,
        )
    except InvalidArgument:
        raise
    except Exception as exc:  # eth-keys raises several types for a malformed (r, s, v)
        raise BadSignature(f"signature from {payload.client} does not parse: {exc}") from exc
    signer = address_bytes(recovered)
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
    if data is not None and (got := protocol.payload_digest(data)) != payload.digest:
        raise DigestMismatch(
            f"payload bytes from 0x{signer.hex()} hash to 0x{got.hex()}; "
            f"signed digest is 0x{payload.digest.hex()}"
        )
    return "0x" + signer.hex()
