"""The aggregator's side of a round's collective decryption (mixed into AggregationRound).

Under a multiparty key (``AggregationRound(..., secure="ckks", keys=epoch)``) the round holds
no key material: once the payloads are in, :meth:`Decryption.decryption_request` fixes what is
decrypted (the round then takes no more payloads) and returns the request every active party
answers with :func:`~bcfl_engine.decryption.party_share`; :meth:`Decryption.add_share` checks
each answer (a party of the epoch, in the active set, its signature by the account the epoch
names, over this round's root and aggregates) and keeps it; ``finalize`` combines the shares and
commits, with the aggregates, the shares' digests and signatures and the key epoch in the
metadata (:func:`keys_meta`), every artifact in the store.

- With ``rule="mean"`` the one aggregate is the weighted sum of every payload, and the
  committed result is its decryption (float64, :func:`decode_result`).
- With a robust rule the round is bucketed (:mod:`bcfl_engine.buckets`): it seals its payloads on
  chain, draws the buckets from the seal and the next block, sums each bucket, and the parties
  decrypt the bucket sums only; the committed result is the rule over the bucket means
  (float32, as a plaintext round's), with the seal, beacon, bucket size and weights in the
  metadata (:func:`bucket_meta`).

Shares live in memory until the commit: an aggregator that restarts asks again, and a party
answers the same request (same ``c1``, same active set) with the same share. A party that drops
out cannot be replaced for the same aggregate: the parties refuse a second active set for one
``c1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .decryption import DecryptionRequest, SignedShare, digest_list, noise_digest, share_signer
from .errors import InvalidArgument, KeyShareError

RESULT_DTYPE = np.dtype("<f8")
"""The decrypted sum of a plain secure round is committed as little-endian float64 values."""


def decode_result(data: bytes) -> np.ndarray:
    """The decrypted sum of a multiparty round from its committed bytes."""
    if len(data) % RESULT_DTYPE.itemsize:
        raise InvalidArgument(f"a decrypted result is float64 values; got {len(data)} bytes")
    return np.frombuffer(data, dtype=RESULT_DTYPE).copy()


def combine(
    keys: Any, aggregates: Sequence[bytes], shares: Mapping[int, Sequence[bytes]]
) -> np.ndarray:
    """The decryption ``[aggregates, d]`` (float64) of each aggregate from every active party's
    share of it (the round's and the audit's one computation)."""
    from .he import multiparty as mp

    t = None if keys.n_of_n else keys.threshold
    rows = [
        mp.combine_decryption(
            agg, {p: s[k] for p, s in shares.items()}, parties=keys.ids, threshold=t
        )
        for k, agg in enumerate(aggregates)
    ]
    return np.stack([np.asarray(r, dtype=np.float64) for r in rows])


def bucket_means(sums: np.ndarray, weights: Sequence[int]) -> torch.Tensor:
    """The bucket means ``[b, d]`` (float32, what the rules take) of decrypted bucket sums."""
    w = np.asarray(weights, dtype=np.float64)[:, None]
    return torch.from_numpy((sums / w).astype(np.float32))


def keys_meta(
    keys: Any, request: DecryptionRequest, shares: dict[int, SignedShare]
) -> dict[str, Any]:
    """What a round's metadata says of its decryption: the key epoch, each aggregate's digest,
    the active set and each party's share digests and signature (in party order)."""
    from .protocol import payload_digest

    return {
        **keys.describe(),
        "aggregates": [payload_digest(a).hex() for a in request.aggregates],
        "active": list(request.active),
        "shares": [
            [p, [payload_digest(x).hex() for x in shares[p].shares], shares[p].signature.hex()]
            for p in sorted(shares)
        ],
    }


def bucket_meta(seal: Any, beacon: bytes, s: int, weights: Sequence[int]) -> dict[str, Any]:
    """What a bucketed round's metadata says of its buckets: enough to redraw them from the
    chain (its seal's block, the beacon) and to weigh their means."""
    return {
        "size": s,
        "seal_block": seal.block_number,
        "beacon": beacon.hex(),
        "weights": list(weights),
    }


class Decryption:
    """The decrypting steps of a multiparty round (AggregationRound sets these)."""

    task: int
    round: int
    rule: str
    f: int
    ledger: Any
    keys: Any
    store: Any
    he_context: bytes | None
    bucket_size: int | None
    _records: list[dict[str, Any]]
    _sum: Any
    _request: DecryptionRequest | None
    _shares: dict[int, SignedShare]
    _buckets: dict[str, Any] | None
    key: str
    dp: Any  # PrivateRound's, with _spend: a private round past its budget asks no party
    _spend: Any

    if TYPE_CHECKING:  # AggregationRound's

        @property
        def committed(self) -> bool: ...

    @property
    def bucketed(self) -> bool:
        return self.keys is not None and self.rule != "mean"

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
        again returns the same request. A bucketed round seals its payloads on chain first."""
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
        self._spend()  # BudgetExceeded before any party draws noise
        outside = sorted(set(chosen) - set(self.keys.ids))
        if outside:
            raise KeyShareError(f"party {outside[0]} is not a party of the key", outside[0])
        payloads = tuple(
            self.store.payload(self.key, self.round, r["digest"]) for r in self._records
        )
        root = MerkleTree.from_leaves(leaves_of(self.round, self._records)).root
        groups, s = None, None
        if self.bucketed:
            groups, s, aggregates = self._bucket(root, payloads)
        else:
            aggregates = (bytes(self._sum.result()),)
        self._request = DecryptionRequest(
            task=self.task, round=self.round, epoch=self.keys.epoch, updates_root=root,
            aggregates=aggregates, active=tuple(chosen), records=tuple(dict(r) for r in self._records),
            payloads=payloads, buckets=groups, bucket_size=s, dp=self.dp,
        )  # fmt: skip
        return self._request

    def _bucket(
        self, root: bytes, payloads: Sequence[bytes]
    ) -> tuple[tuple[tuple[int, ...], ...], int, tuple[bytes, ...]]:
        """Seal, draw the buckets from the seal and the next block, sum each bucket."""
        from . import buckets, he

        n = len(self._records)
        s = buckets.bucket_size(self.rule, n, self.f, self.bucket_size)
        seal = self.ledger.seal_round(self.task, self.round, updates_root=root, n=n)
        beacon = self.ledger.beacon(seal)
        groups = tuple(tuple(b) for b in buckets.assign(buckets.seed(root, beacon), n, s))
        weights = [int(r["weight"]) for r in self._records]
        sums = tuple(
            bytes(he.aggregate([payloads[i] for i in b], weights=[weights[i] for i in b],
                               context=self.he_context))
            for b in groups
        )  # fmt: skip
        self._buckets = bucket_meta(seal, beacon, s, [sum(weights[i] for i in b) for b in groups])
        return groups, s, sums

    @property
    def missing_shares(self) -> list[int]:
        """The active parties whose shares are not in yet (all of them before a request)."""
        if self._request is None:
            return []
        return sorted(set(self._request.active) - set(self._shares))

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
        if len(signed.shares) != len(request.aggregates):
            raise KeyShareError(
                f"party {party}: {len(signed.shares)} shares for {len(request.aggregates)} aggregates",
                party,
            )
        signer = share_signer(
            signed, self.ledger.domain, task=self.task, round=self.round,
            updates_root=request.updates_root, aggregate=request.aggregate_digest,
            epoch=request.epoch, noise=noise_digest(request.dp),
        )  # fmt: skip
        if signer != self.keys.account_of(party):
            raise KeyShareError(
                f"party {party}: the share is not signed by its account {self.keys.account_of(party)} "
                "over this round's root and aggregate",
                party,
            )
        for raw in signed.shares:
            share = mpformat.read_decryption_share(raw)
            if share.party != party or share.active != request.active:
                raise KeyShareError(
                    f"party {party}: its share names another party or active set", party
                )
        self._shares[party] = signed

    def _decrypt(self) -> tuple[np.ndarray, dict[str, Any], dict[str, Any] | None]:
        """``(decryptions [aggregates, d], decryption metadata, bucket metadata or None)`` once
        every active party's shares are in; the aggregates and the shares go to the store."""
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
        plain = combine(
            self.keys, request.aggregates, {p: s.shares for p, s in self._shares.items()}
        )
        for blob in request.aggregates:
            self.store.put(blob)
        for s in self._shares.values():
            for raw in s.shares:
                self.store.put(raw)
        return plain, keys_meta(self.keys, request, self._shares), self._buckets


__all__ = ["Decryption", "bucket_means", "combine", "decode_result", "digest_list", "keys_meta"]
