"""The collective decryption of a secure round: what the aggregator asks, what a party signs.

A round under a multiparty key (:mod:`bcfl_engine.he.multiparty`) ends with the key's parties
decrypting its aggregate together; the aggregator holds no key material. The aggregator sends
every active party one :class:`DecryptionRequest`: the aggregate, the round's acceptance records
and payloads, their Merkle root (the updates root it will commit) and the active set. A party
(:func:`party_share`) checks everything it is shown before it computes anything:

- the key epoch is the task's on chain and this party's account is the one it names;
- each payload hashes to its record's digest and carries its client's signature over
  ``(task, round, digest, weight)``; every client is a registered participant, none twice;
- the records give the updates root of the request; the aggregate's ``c1`` is the weighted sum
  of the payloads' ``c1`` over at least ``min_clients`` of them, and this ``c1`` was never shared
  under another active set (:meth:`~bcfl_engine.he.multiparty.KeyShare.decryption_share`);

then signs ``DecryptionShare(task, round, updatesRoot, aggregate, share, epoch, party)`` (EIP-712,
the chain's payload domain) with the account the key epoch names. The round keeps the shares and
commits their digests and signatures in its metadata (:func:`share_entries`), so the audit
rechecks each signature, recombines the shares and hashes the result. A party whose shown root
is not the root committed later has evidence: its signature names the root it saw.

This module owns the signed statement and the request; :mod:`bcfl_engine.round_decrypt` is the
aggregator's side.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .errors import DecryptionRefused, InvalidArgument, KeyShareError, PayloadError
from .updates import keccak256

SHARE_FIELDS: tuple[tuple[str, str], ...] = (
    ("task", "uint256"),
    ("round", "uint256"),
    ("updatesRoot", "bytes32"),
    ("aggregate", "bytes32"),
    ("share", "bytes32"),
    ("epoch", "uint256"),
    ("noise", "bytes32"),
    ("party", "uint256"),
)
SHARE_TYPE = "DecryptionShare(" + ",".join(f"{t} {n}" for n, t in SHARE_FIELDS) + ")"
"""The EIP-712 struct a party signs over its decryption share (``encodeType``)."""


@dataclass(frozen=True)
class DecryptionRequest:
    """What the aggregator sends each active party: decrypt the round's ``aggregates``.

    ``records`` are the round's acceptance records (client, digest, weight, salt, signature) in
    acceptance order, ``payloads`` their bytes in the same order, ``updates_root`` the Merkle
    root of their leaves. A plain secure round has one aggregate, of every payload; a bucketed
    one (:mod:`bcfl_engine.buckets`) one per bucket: ``buckets`` lists the records' indices of
    each, ``bucket_size`` the ``s`` they were drawn with, from the round's seal on chain.
    ``dp`` names the round's :class:`~bcfl_engine.dp.GaussianDP` (None: no DP): each party
    adds its part of the noise (:mod:`bcfl_engine.dp_shares`) and the round commits the same
    parameters.
    """

    task: int
    round: int
    epoch: int
    updates_root: bytes
    aggregates: tuple[bytes, ...]
    active: tuple[int, ...]
    records: tuple[dict[str, Any], ...]
    payloads: tuple[bytes, ...]
    buckets: tuple[tuple[int, ...], ...] | None = None
    bucket_size: int | None = None
    dp: Any = None

    @property
    def members(self) -> tuple[tuple[int, ...], ...]:
        """The records' indices summed into each aggregate."""
        return self.buckets or (tuple(range(len(self.records))),)

    @property
    def aggregate_digest(self) -> bytes:
        """What a party signs of the aggregates: the digest of their digests, in order."""
        return digest_list(self.aggregates)


@dataclass(frozen=True)
class SignedShare:
    """A party's decryption shares (one per aggregate) and its signature over
    :data:`SHARE_TYPE`."""

    party: int
    shares: tuple[bytes, ...]
    signature: bytes

    @property
    def digest(self) -> bytes:
        return digest_list(self.shares)


def digest_list(blobs: Sequence[bytes]) -> bytes:
    """The payload digest of the payload digests of ``blobs``, in order."""
    from .protocol import payload_digest

    return payload_digest(b"".join(payload_digest(b) for b in blobs))


def noise_digest(dp: Any) -> bytes:
    """What a party signs of the differential-privacy noise it added: the keccak-256 of the
    mechanism's parameters as a round commits them (:meth:`bcfl_engine.dp.GaussianDP.as_meta`),
    32 zero bytes without DP. A party can later prove which noise scale it agreed to."""
    if dp is None:
        return bytes(32)
    from .protocol import encode_meta

    return keccak256(encode_meta(dp.as_meta()))


def _word(value: int, what: str) -> bytes:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < 2**256:
        raise InvalidArgument(f"{what} must be a uint256; got {value!r:.80}")
    return value.to_bytes(32, "big")


@functools.cache
def _share_type() -> bytes:
    return keccak256(SHARE_TYPE.encode())


def share_message(
    domain: Any,
    *,
    task: int,
    round: int,
    updates_root: bytes,
    aggregate: bytes,
    share: bytes,
    epoch: int,
    party: int,
    noise: bytes = bytes(32),
) -> bytes:
    """The 32 bytes a party signs: EIP-712 ``hashStruct(DecryptionShare)`` under ``domain``
    (the chain's :class:`~bcfl_engine.chain.PayloadDomain`); ``aggregate`` and ``share`` are
    the payload digests of those bytes."""
    from .chain.merkle import as_bytes32
    from .chain.signing import domain_separator

    struct = keccak256(
        _share_type()
        + _word(task, "task")
        + _word(round, "round")
        + as_bytes32(updates_root, "updates_root")
        + as_bytes32(aggregate, "aggregate")
        + as_bytes32(share, "share")
        + _word(epoch, "epoch")
        + as_bytes32(noise, "noise")
        + _word(party, "party")
    )
    return keccak256(b"\x19\x01" + domain_separator(domain) + struct)


def sign_share(
    account_key: bytes | str,
    request: DecryptionRequest,
    party: int,
    shares: Sequence[bytes],
    domain: Any,
) -> SignedShare:
    """Sign ``shares`` (this party's answer to ``request``) with the party's account key."""
    from .chain._deps import need

    key = (
        bytes.fromhex(account_key.removeprefix("0x"))
        if isinstance(account_key, str)
        else account_key
    )
    message = share_message(
        domain,
        task=request.task,
        round=request.round,
        updates_root=request.updates_root,
        aggregate=request.aggregate_digest,
        share=digest_list(shares),
        epoch=request.epoch,
        party=party,
        noise=noise_digest(request.dp),
    )
    signature = need("coincurve").PrivateKey(bytes(key)).sign_recoverable(message, hasher=None)
    return SignedShare(party, tuple(bytes(s) for s in shares), bytes(signature))


def share_signer(
    signed: SignedShare,
    domain: Any,
    *,
    task: int,
    round: int,
    updates_root: bytes,
    aggregate: bytes,
    epoch: int,
    noise: bytes = bytes(32),
) -> str:
    """The ``0x`` address that signed ``signed`` for these fields (``aggregate``: the
    aggregates' :func:`digest_list`); KeyShareError naming the party if it does not recover."""
    from .chain.signing import _recover

    message = share_message(
        domain,
        task=task,
        round=round,
        updates_root=updates_root,
        aggregate=aggregate,
        share=signed.digest,
        epoch=epoch,
        party=signed.party,
        noise=noise,
    )
    try:
        return "0x" + _recover(message, bytes(signed.signature), f"party {signed.party}").hex()
    except PayloadError as exc:
        raise KeyShareError(f"party {signed.party}: {exc}", signed.party) from None


def party_share(
    key_share: Any,
    account_key: bytes | str,
    request: DecryptionRequest,
    *,
    keys: Any,
    ledger: Any,
    participants: Sequence[str],
    min_clients: int = 2,
    dp: Any = None,
) -> SignedShare:
    """A party's signed decryption share for ``request``, after the checks of the module
    docstring.

    Parameters
    ----------
    key_share : this party's :class:`~bcfl_engine.he.multiparty.KeyShare`
    account_key : the private key of the account ``keys`` names for this party
    keys : the :class:`~bcfl_engine.he.mpepoch.KeyEpoch` this party set up
    ledger : a ledger of the task's chain (read only)
    participants : the task's registered participants, in registration order
    dp : the :class:`~bcfl_engine.dp.GaussianDP` this party agreed to for the task, or None;
        it must be the request's, and this party then adds its part of the noise to each share
        (:func:`bcfl_engine.dp_shares.check_request`)

    Raises
    ------
    DecryptionRefused (naming this party) for anything the request gets wrong; nothing is
    signed and this party's decryption log is unchanged then.
    """
    from . import protocol
    from .chain import MerkleTree, SignedPayload, participant_leaf, verify_payloads
    from .chain._deps import need
    from .chain.merkle import address_bytes
    from .he.mpepoch import check_epoch

    me = key_share.party

    def refuse(why: str) -> DecryptionRefused:
        return DecryptionRefused(f"party {me}: {why}", me)

    if me not in request.active:
        raise refuse(f"this party is not in the active set {list(request.active)}")
    if keys.epoch != request.epoch:
        raise refuse(f"the request names key epoch {request.epoch}; this party holds {keys.epoch}")
    check_epoch(ledger, request.task, keys)
    own = "0x" + need("eth_account").Account.from_key(account_key).address[2:].lower()
    if keys.account_of(me) != own:
        raise refuse(f"key epoch {keys.epoch} names account {keys.account_of(me)}, not {own}")
    registered = ledger.task_info(request.task).participants_root
    if MerkleTree.from_leaves([participant_leaf(p) for p in participants]).root != registered:
        raise refuse(f"these participants are not those registered for task {request.task}")
    if len(request.records) != len(request.payloads) or not request.records:
        raise refuse(f"{len(request.records)} records for {len(request.payloads)} payloads")
    try:
        records = [protocol.check_acceptance(dict(r)) for r in request.records]
    except PayloadError as exc:
        raise refuse(str(exc)) from None
    clients = [r["client"] for r in records]
    if len(set(clients)) != len(clients):
        raise refuse("a client contributes twice")
    signed = [
        SignedPayload(
            request.task, request.round, bytes.fromhex(r["digest"]), r["client"],
            bytes.fromhex(r["signature"]), r["weight"],
        )
        for r in records
    ]  # fmt: skip
    members = frozenset(address_bytes(p, "participant") for p in participants)
    checked = verify_payloads(
        signed, task=request.task, round=request.round, participants=members,
        domain=ledger.domain, data=list(request.payloads),
    )  # fmt: skip
    for r, result in zip(records, checked, strict=True):
        if not isinstance(result, str):
            raise refuse(f"client {r['client']}: {result}")
    root = MerkleTree.from_leaves(protocol.leaves_of(request.round, records)).root
    if root != request.updates_root:
        raise refuse("the records do not give the request's updates root")
    groups = request.members
    from .dp_shares import check_request

    dp_sigma = check_request(dp, request, records, refuse)
    if request.buckets is not None:
        _check_buckets(request, ledger, refuse)
    elif len(request.aggregates) != 1:
        raise refuse(f"{len(request.aggregates)} aggregates for one unbucketed round")
    shares = [
        key_share.decryption_share(
            agg,
            contributions={clients[i]: request.payloads[i] for i in bucket},
            weights=[records[i]["weight"] for i in bucket],
            active=list(request.active),
            min_clients=min_clients,
            dp_sigma=dp_sigma,
        )
        for agg, bucket in zip(request.aggregates, groups, strict=True)
    ]
    return sign_share(account_key, request, me, shares, ledger.domain)


def _check_buckets(request: DecryptionRequest, ledger: Any, refuse: Any) -> None:
    """The request's buckets are those the chain draws: its seal is the round's (root and n),
    the block after it is mined, and the draw from both gives these buckets."""
    from . import buckets

    seal = ledger.sealed(request.task, request.round)
    if seal is None or (seal.updates_root, seal.n) != (request.updates_root, len(request.records)):
        raise refuse("the round's seal on chain is missing or names other payloads")
    if ledger.w3.eth.block_number <= seal.block_number:
        raise refuse("the block after the round's seal is not mined yet: no buckets to draw")
    s = request.bucket_size
    if not isinstance(s, int) or s < 2:
        raise refuse(f"bucket size {s!r}: a bucket of fewer than 2 shows one update")
    drawn = buckets.assign(
        buckets.seed(seal.updates_root, ledger.block_name(seal.block_number + 1)),
        len(request.records),
        s,
    )
    if [list(b) for b in request.buckets or ()] != drawn:
        raise refuse("the request's buckets are not those the chain draws")
    if len(request.aggregates) != len(drawn):
        raise refuse(f"{len(request.aggregates)} aggregates for {len(drawn)} buckets")


__all__ = [
    "SHARE_FIELDS",
    "SHARE_TYPE",
    "DecryptionRequest",
    "SignedShare",
    "digest_list",
    "noise_digest",
    "party_share",
    "share_message",
    "share_signer",
    "sign_share",
]
