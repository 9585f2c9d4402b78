"""The aggregator's side of a round's collective decryption (mixed into AggregationRound).

Under a multiparty key (``AggregationRound(..., secure="ckks", keys=epoch)``) the round holds
no key material: once the payloads are in, :meth:`Decryption.decryption_request` fixes the
aggregate (the round then takes no more payloads) and returns the request every active party
answers with :func:`~bcfl_engine.decryption.party_share`; :meth:`Decryption.add_share` checks
each answer (a party of the epoch, in the active set, its signature by the account the epoch
names, over this round's root and aggregate) and keeps it; ``finalize`` combines the shares, and
commits the decrypted sum as the round's result with the aggregate, the shares' digests and
signatures and the key epoch in the metadata (:func:`keys_meta`), every artifact in the store.

Shares live in memory until the commit: an aggregator that restarts asks again, and a party
answers the same request (same ``c1``, same active set) with the same share. A party that drops
out cannot be replaced for the same aggregate: the parties refuse a second active set for one
``c1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .decryption import DecryptionRequest, SignedShare, share_signer
from .errors import InvalidArgument, KeyShareError

RESULT_DTYPE = np.dtype("<f8")
"""The decrypted sum is committed as little-endian float64 values."""


def decode_result(data: bytes) -> np.ndarray:
    """The decrypted sum of a multiparty round from its committed bytes."""
    if len(data) % RESULT_DTYPE.itemsize:
        raise InvalidArgument(f"a decrypted result is float64 values; got {len(data)} bytes")
    return np.frombuffer(data, dtype=RESULT_DTYPE).copy()


def combine(keys: Any, aggregate: bytes, shares: dict[int, bytes]) -> bytes:
    """The decrypted sum's bytes from the shares of ``keys``'s parties (the round's and the
    audit's one computation)."""
    from .he import multiparty as mp

    values = mp.combine_decryption(
        aggregate, shares, parties=keys.ids, threshold=None if keys.n_of_n else keys.threshold
    )
    return np.ascontiguousarray(values, dtype=RESULT_DTYPE).tobytes()


def keys_meta(
    keys: Any, request: DecryptionRequest, shares: dict[int, SignedShare]
) -> dict[str, Any]:
    """What a round's metadata says of its decryption: the key epoch, the aggregate's digest,
    the active set and each share's digest and signature (in party order)."""
    return {
        **keys.describe(),
        "aggregate": request.aggregate_digest.hex(),
        "active": list(request.active),
        "shares": [[p, shares[p].digest.hex(), shares[p].signature.hex()] for p in sorted(shares)],
    }


class Decryption:
    """The decrypting steps of a multiparty round (AggregationRound sets these)."""

    task: int
    round: int
    ledger: Any
    keys: Any
    store: Any
    _records: list[dict[str, Any]]
    _sum: Any
    _request: DecryptionRequest | None
    _shares: dict[int, SignedShare]
    key: str

    @property
    def committed(self) -> bool:
        raise NotImplementedError  # AggregationRound's

    def _sealed(self) -> str | None:
        """Why the round takes no more payloads once its aggregate went out, or None."""
        if self._request is not None:
            return (
                f"round {self.round} of task {self.task} is closed: its aggregate went out "
                "for decryption"
            )
        return None

    def decryption_request(self, active: Any = None) -> DecryptionRequest:
        """Close the round to payloads and return what every party of ``active`` must decrypt
        (None: every party for an N-of-N key, else the first ``threshold`` parties). Asking
        again returns the same request."""
        from .chain import MerkleTree
        from .he.mpepoch import active_default
        from .protocol import leaves_of

        if self.keys is None:
            raise InvalidArgument("only a round under a multiparty key (keys=) is decrypted")
        if self.committed:
            raise InvalidArgument(f"round {self.round} of task {self.task} is already committed")
        chosen = active_default(self.keys, active)
        if self._request is not None:
            if active is not None and chosen != self._request.active:
                raise InvalidArgument(
                    f"the round asked the active set {list(self._request.active)} already; "
                    "the parties refuse a second one for the same aggregate"
                )
            return self._request
        if not self._records:
            raise InvalidArgument(f"round {self.round} of task {self.task} has no accepted payload")
        outside = sorted(set(chosen) - set(self.keys.ids))
        if outside:
            raise KeyShareError(f"party {outside[0]} is not a party of the key", outside[0])
        payloads = tuple(
            self.store.payload(self.key, self.round, r["digest"]) for r in self._records
        )
        self._request = DecryptionRequest(
            task=self.task,
            round=self.round,
            epoch=self.keys.epoch,
            updates_root=MerkleTree.from_leaves(leaves_of(self.round, self._records)).root,
            aggregate=bytes(self._sum.result()),
            active=tuple(chosen),
            records=tuple(dict(r) for r in self._records),
            payloads=payloads,
        )
        return self._request

    def add_share(self, signed: SignedShare) -> None:
        """Keep a party's answer to :meth:`decryption_request`; KeyShareError naming the party
        for a share from a non-party or a party outside the active set, a second share, a
        signature by another account or over other fields, or a share of another ciphertext or
        active set (nothing kept then)."""
        from .he import mpformat

        request = self._request
        if request is None:
            raise InvalidArgument("no decryption was asked: call decryption_request() first")
        if not isinstance(signed, SignedShare):
            raise InvalidArgument(f"expected a SignedShare; got {type(signed).__name__}")
        party = signed.party
        if party not in self.keys.ids:
            raise KeyShareError(f"party {party!r:.40} is not a party of the key", None)
        if party not in request.active:
            raise KeyShareError(
                f"party {party} is not in the active set {list(request.active)}", party
            )
        if party in self._shares:
            if self._shares[party] == signed:
                return
            raise KeyShareError(f"party {party} sent a second, different share", party)
        signer = share_signer(
            signed, self.ledger.domain, task=self.task, round=self.round,
            updates_root=request.updates_root, aggregate=request.aggregate_digest,
            epoch=request.epoch,
        )  # fmt: skip
        if signer != self.keys.account_of(party):
            raise KeyShareError(
                f"party {party}: the share is not signed by its account {self.keys.account_of(party)} "
                "over this round's root and aggregate",
                party,
            )
        share = mpformat.read_decryption_share(signed.share)
        if share.party != party or share.active != request.active:
            raise KeyShareError(
                f"party {party}: its share names another party or active set", party
            )
        self._shares[party] = signed

    def _decrypt(self) -> tuple[bytes, dict[str, Any]]:
        """The decrypted sum's bytes and the metadata of the decryption (every active party's
        share in); the aggregate and the shares go to the store."""
        request = self._request
        if request is None:
            raise InvalidArgument(
                "a round under a multiparty key is decrypted by its parties: call "
                "decryption_request(), hand it to each active party, add_share() each answer"
            )
        missing = sorted(set(request.active) - set(self._shares))
        if missing:
            raise KeyShareError(
                f"party {missing[0]} of the active set sent no share yet", missing[0]
            )
        result = combine(
            self.keys, request.aggregate, {p: s.share for p, s in self._shares.items()}
        )
        self.store.put(request.aggregate)
        for s in self._shares.values():
            self.store.put(s.share)
        return result, keys_meta(self.keys, request, self._shares)
