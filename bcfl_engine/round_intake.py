"""Collecting a round's payloads: each checked once, a burst written as one durable group.

:class:`Intake` is the collecting half of :class:`~bcfl_engine.round.AggregationRound`:
:meth:`~Intake.submit_many` parses a burst, hashes each payload once
(:func:`~bcfl_engine.protocol.payload_digest`), recovers every signer in one native call
(:func:`~bcfl_engine.chain.verify_payloads`), refuses duplicates, checks contents (a plaintext
update is copied into the round's batch buffer, its one copy, and checked finite there; a CKKS
one is parsed against the round's layout), appends the accepted ones to the round's log as one
group with one fsync (:mod:`bcfl_engine.round_log`) and only then acknowledges them.
:meth:`~Intake._load` takes a restarted round's groups back, checking them again.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from . import protocol
from .errors import (
    BcflError,
    DuplicateClient,
    HeadroomExceeded,
    InvalidArgument,
    InvalidWeight,
    NonFiniteUpdate,
    PayloadError,
    ShapeMismatch,
)
from .protocol import Payload
from .store import PayloadStore
from .updates import UpdateBatch, intake_norms, rows_finite

PART = 2048
"""Payloads per part of a pipelined burst: a burst of at least two parts writes one part's
frame while it recovers the next part's signers (one fsync for the whole burst)."""


class Intake:
    """The collecting steps of a round (mixed into AggregationRound, which sets these)."""

    task: int
    round: int
    key: str
    dim: int | None
    store: PayloadStore
    participants: frozenset[bytes]
    domain: Any

    if TYPE_CHECKING:  # AggregationRound's

        @property
        def committed(self) -> bool: ...

    def _closed(self) -> str | None:
        """Why the round takes no more payloads, or None while it takes them."""
        if self.committed:
            return f"round {self.round} of task {self.task} is already committed"
        return None

    _batch: UpdateBatch | None
    _sum: Any
    _records: list[dict[str, Any]]
    _clients: dict[str, dict[str, Any]]
    _commit: Any
    secure: str | None

    def _check_group(
        self, group: list[tuple[str, bytes, int]], skip: int = 0, prev: Any = None
    ) -> tuple[list[BcflError | None], Any]:
        """Check the contents of a group of ``(client, bytes, weight)`` once: each one's error
        or None, and what :meth:`_take` adds (plaintext: the rows' norms, or None). Under CKKS each payload is parsed against the
        round's layout into a batch (a lean one's weight held against its headroom); a
        plaintext one is copied into the round's free batch rows (its one copy; past the
        ``skip`` rows earlier parts of the burst hold), checked finite there, and the rows are
        claimed once the group is durable. ``prev``: the CKKS batch of an earlier part of the
        burst (its layout, and a lean one's weights, count)."""
        errors: list[BcflError | None] = [None] * len(group)
        if self._sum is not None:
            batch = self._sum.batch(max(len(group), 1), prev)
            for j, (client, data, weight) in enumerate(group):
                try:
                    self._sum.admit(batch, client, data, weight)  # names the client and mismatch
                except (PayloadError, HeadroomExceeded) as exc:
                    errors[j] = exc
            return errors, batch
        assert self.dim is not None and self._batch is not None
        sized = []
        for j, (client, data, _) in enumerate(group):
            try:
                protocol.check_update_size(data, self.dim)
                sized.append(j)
            except ShapeMismatch as exc:
                errors[j] = ShapeMismatch(f"client {client}: {exc}")
        rows = self._batch.free_rows(len(sized), skip=skip)
        buf = rows.numpy()
        for r, j in enumerate(sized):
            buf[r] = np.frombuffer(group[j][1], dtype="<f4")
        # One pass over the new rows: their norms (kept for a private mean), finite exactly
        # where the row is; without the native kernel, the finiteness check alone.
        norms = intake_norms(rows)
        finite = rows_finite(rows) if norms is None else torch.isfinite(norms).tolist()
        if not all(finite):
            for r, j in enumerate(sized):
                if not finite[r]:
                    errors[j] = NonFiniteUpdate(
                        f"client {group[j][0]}: the update holds NaN or infinity"
                    )
            keep = [r for r in range(len(sized)) if finite[r]]
            # The good rows first, in order; through numpy, so the batch's count of torch
            # writes (which would mark its norms stale) does not move.
            buf[: len(keep)] = buf[keep]
            norms = None if norms is None else norms[keep]
        return errors, norms

    def _take(self, records: list[dict[str, Any]], batch: Any) -> None:
        """Add a durable group's checked rows to the round."""
        if self._sum is not None:
            self._sum.take(batch, [r["weight"] for r in records])
        elif self._batch is not None:
            self._batch.claim(
                [r["client"] for r in records],
                [float(r["weight"]) for r in records],
                [bytes.fromhex(r["digest"]) for r in records],
                norms=batch,  # the rows' norms from _check_group, or None
            )
        self._remember(records)

    def _remember(self, records: list[dict[str, Any]]) -> None:
        for record in records:
            self._records.append(record)
            self._clients[record["client"]] = record

    def _load(self, records: list[dict[str, Any]]) -> None:
        """Take back the accepted payloads from the store (resume), checking them again."""
        from .chain import SignedPayload, verify_payloads

        for record in records:
            try:
                protocol.check_acceptance(record)
            except PayloadError as exc:
                raise PayloadError(f"store {self.store.root}, round {self.round}: {exc}") from None
        if self._commit is not None:  # committed: its records give the result, not its bytes
            self._remember(records)
            return
        signed, datas = [], []
        for record in records:
            digest = bytes.fromhex(record["digest"])
            # Hashed once: the bytes must still be those accepted.
            data = self.store.payload(self.key, self.round, digest)
            if protocol.payload_digest(data) != digest:
                if protocol.digest_function("keccak-256")(data) == digest:
                    raise PayloadError(
                        f"round {self.round} of task {self.task} was started by an older engine "
                        f"(payloads named by keccak-256, store {self.store.root}): its records "
                        f"cannot be committed under {protocol.DIGEST}; finish it with that "
                        "version, or collect the round again in a new store"
                    )
                raise PayloadError(
                    f"stored payload 0x{digest.hex()} was altered: its bytes hash to "
                    f"0x{protocol.payload_digest(data).hex()}"
                )
            datas.append(data)
            signature = bytes.fromhex(record["signature"])
            signed.append(
                SignedPayload(
                    self.task, self.round, digest, record["client"], signature, record["weight"]
                )
            )
        checks = verify_payloads(
            signed,
            task=self.task,
            round=self.round,
            participants=self.participants,
            domain=self.domain,
        )
        for check in checks:
            if isinstance(check, BcflError):
                raise check
        errors, batch = self._check_group(
            [(r["client"], data, r["weight"]) for r, data in zip(records, datas, strict=True)]
        )
        for error in errors:
            if error is not None:
                raise error
        self._take(records, batch)

    def submit(self, payload: Payload) -> dict[str, Any]:
        """Check, store durably and accept ``payload``; return its acceptance record.

        Raises InvalidWeight (a weight that is not an int in ``[1, 2**64 - 1]``), a
        :class:`~bcfl_engine.errors.PayloadError` subclass (unsigned, bad signature or a weight
        other than the one signed, replay, not a participant, a CKKS payload that does not
        match the round's first one, a round already committed), HeadroomExceeded (a lean payload
        whose weight takes the round's weight sum past the payloads' headroom), DuplicateClient (another
        payload from the same client), ShapeMismatch or NonFiniteUpdate, and leaves the round
        and the store unchanged. Sending an accepted payload again returns its record
        (clients may retry). The payload is durable (a group of one) before this returns.
        """
        [result] = self.submit_many([payload], workers=1)
        if isinstance(result, BcflError):
            raise result
        return result

    def submit_many(
        self, payloads: Sequence[Payload], *, workers: int | None = None
    ) -> list[dict[str, Any] | BcflError]:
        """:meth:`submit` a burst with one group commit; one result per payload, in order.

        Each payload is checked as :meth:`submit` checks it (signatures recovered on a pool of
        ``workers`` threads, see :func:`~bcfl_engine.chain.verify_payloads`); the accepted ones
        are written as one group of the round's log and made durable with one fsync before
        any is acknowledged. A result is the payload's acceptance record, or the typed error
        that payload alone raised: a bad payload rejects only itself (a second payload of a
        client in the same burst is a DuplicateClient, unless it is the same payload; in a round
        already committed, each is a PayloadError). A failed write raises and accepts none.
        """
        from .chain import SignedPayload, verify_payloads

        if (closed := self._closed()) is not None:  # each payload gets one submit's answer
            return [PayloadError(closed)] * len(payloads)
        results: list[dict[str, Any] | BcflError | None] = [None] * len(payloads)
        parsed: list[tuple[int, Payload, bytes, int]] = []
        for i, payload in enumerate(payloads):
            try:
                data, weight = self._parse(payload)
            except (PayloadError, InvalidArgument) as exc:
                results[i] = exc
                continue
            parsed.append((i, payload, data, weight))
        if not parsed:
            return results  # type: ignore[return-value]
        digests = protocol.payload_digests([data for _, _, data, _ in parsed])  # once each
        todo = [(i, p, data, h, w) for (i, p, data, w), h in zip(parsed, digests, strict=True)]
        log = self.store.log(self.key, self.round)
        mark, taken = log.end, len(self._records)
        group: dict[str, dict[str, Any]] = {}  # client -> its entry in this burst
        steps: list[tuple[list[dict[str, Any]], Any]] = []
        # Pipelined: the frame of one part is written (GIL released) while the next part's
        # signers are recovered; one fdatasync makes every part durable, then all are taken.
        writer = ThreadPoolExecutor(1) if len(todo) >= 2 * PART else None
        pending: Future[None] | None = None
        try:
            for start in range(0, len(todo), PART if writer else len(todo)):
                part = todo[start : start + (PART if writer else len(todo))]
                checks = verify_payloads(
                    [
                        SignedPayload(self.task, self.round, d, p.client, p.signature, w)
                        for _, p, _, d, w in part
                    ],
                    task=self.task,
                    round=self.round,
                    participants=self.participants,
                    domain=self.domain,
                    workers=workers,
                )
                prev = steps[-1][1] if steps else None
                records, datas, batch = self._admit(part, checks, group, results, taken, prev)
                taken += len(records)
                if records:
                    if pending is not None:
                        pending.result()
                    if writer is not None:
                        pending = writer.submit(log.append, records, datas, sync=False)
                    else:
                        log.append(records, datas, sync=False)
                    steps.append((records, batch))
            if pending is not None:
                pending.result()
            if steps:
                log.sync()  # durable before acknowledged
        except BaseException:
            if pending is not None:
                with contextlib.suppress(BaseException):
                    pending.result()
            log.rollback(mark)  # none of the burst stays
            raise
        finally:
            if writer is not None:
                writer.shutdown()
        for records, batch in steps:
            self._take(records, batch)
        # A same-payload repeat within the burst gets the record its first copy got.
        for i, r in enumerate(results):
            if isinstance(r, dict) and "at" in r:
                results[i] = results[r["at"]]
        assert all(r is not None for r in results)  # every payload got its answer
        return results  # type: ignore[return-value]

    def _admit(
        self,
        part: list[tuple[int, Payload, bytes, bytes, int]],
        checks: list[Any],
        group: dict[str, dict[str, Any]],
        results: list[Any],
        taken: int,
        prev: Any,
    ) -> tuple[list[dict[str, Any]], list[bytes], Any]:
        """One part of a burst, its signers known: duplicates refused, contents checked, the
        acceptance records of the good ones (seq from ``taken``), their bytes, their rows."""
        fresh: list[tuple[int, Payload, bytes, str, int, str]] = []
        for (i, payload, data, digest, weight), client in zip(part, checks, strict=True):
            if isinstance(client, BcflError):
                results[i] = client
                continue
            hexd = digest.hex()
            held = self._clients.get(client) or group.get(client)
            if held is not None:
                # A retry of an accepted payload (after a restart, say) is idempotent.
                same = held["digest"] == hexd and held["weight"] == weight
                results[i] = (
                    held
                    if same
                    else DuplicateClient(
                        f"client {client} already submitted another payload to round {self.round}"
                    )
                )
                continue
            group[client] = {"digest": hexd, "weight": weight, "at": i}
            fresh.append((i, payload, data, hexd, weight, client))
        errors, batch = self._check_group(
            [(f[5], f[2], f[4]) for f in fresh], skip=taken - len(self._records), prev=prev
        )
        records: list[dict[str, Any]] = []
        datas: list[bytes] = []
        salts = os.urandom(32 * len(fresh)).hex()  # for payloads that bring none
        for j, ((i, payload, data, hexd, weight, client), error) in enumerate(
            zip(fresh, errors, strict=True)
        ):
            if error is not None:
                results[i] = error
                continue
            salt = payload.salt.hex() if payload.salt is not None else salts[64 * j : 64 * j + 64]
            record = {
                "seq": taken + len(records),
                "client": client,
                "digest": hexd,
                "weight": weight,
                "salt": salt,
                "signature": bytes(payload.signature or b"").hex(),
            }
            records.append(record)
            datas.append(data)
            results[i] = record
        return records, datas, batch

    def _parse(self, payload: Any) -> tuple[bytes, int]:
        """A payload's bytes and checked weight (before its digest and signature)."""
        if not isinstance(payload, Payload):
            raise InvalidArgument(f"expected a Payload; got {type(payload).__name__}")
        weight = protocol.check_weight(payload.weight, f"client {payload.client}: weight")
        if weight != 1 and self.secure == "ckks" and getattr(self, "dp", None) is not None:
            # The parties' noise covers a sum of clipped updates of weight 1 each: they would
            # refuse the aggregate at decryption, after the round was closed.
            raise InvalidWeight(
                f"client {payload.client}: weight {weight}; a private round under a multiparty "
                "key sums updates of weight 1 (the noise's sensitivity)"
            )
        if payload.salt is not None and (
            not isinstance(payload.salt, bytes) or len(payload.salt) != 32
        ):
            raise InvalidArgument(f"client {payload.client}: salt must be 32 bytes")
        data = payload.data
        if not isinstance(data, bytes):
            if not isinstance(data, (bytearray, memoryview)):
                raise InvalidArgument(f"a payload is bytes; got {type(data).__name__}")
            data = bytes(data)
        return data, weight
