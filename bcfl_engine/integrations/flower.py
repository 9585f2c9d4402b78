"""bcfl_engine as Flower's aggregator: a strategy for the Message API (flwr >= 1.20).

:class:`EngineFedAvg` is Flower's ``flwr.serverapp.strategy.FedAvg`` with ``aggregate_train``
delegated to :func:`bcfl_engine.aggregate`, so any rule of :data:`bcfl_engine.rules.RULES`
(median, trimmed mean, Krum, geometric median, ...) runs on the engine's kernels instead of
Flower's numpy loops. Given ``rounds`` (a factory of
:class:`~bcfl_engine.round.AggregationRound`), each server round instead goes through the
round pipeline: every reply is checked against its client's signature, stored, aggregated,
and the round's Merkle root and result digest are committed to the ledger.

With ``secure="ckks"`` the clients send CKKS ciphertexts (:func:`bcfl_engine.he.encrypt`) and
the strategy returns their homomorphic weighted sum; the clients, who hold the secret key,
decrypt it (:func:`decrypt_global`). Robust rules need the updates in the clear, so a CKKS
strategy is a weighted mean.

What a client puts in its reply, besides Flower's usual ``ArrayRecord`` and ``MetricRecord``
(with the weight under ``weighted_by_key``): a ``ConfigRecord`` under :data:`RECORD_KEY` with
``address`` and ``signature`` (:func:`sign_reply`) when the server commits to a chain, and
``ckks`` (the ciphertext bytes) under secure aggregation.

The legacy ``Strategy.aggregate_fit`` interface is in :mod:`.flower_legacy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import rules
from ..aggregate import aggregate
from ..errors import (
    InvalidArgument,
    MissingDependency,
    NonFiniteUpdate,
    PayloadError,
    ShapeMismatch,
)
from ..updates import ParamSpec

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common.logger import log
    from flwr.serverapp.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None

if TYPE_CHECKING:
    from ..round import AggregationRound

RECORD_KEY = "bcfl"
CKKS_KEY = "bcfl-ckks"
CKKS_WEIGHT_KEY = "bcfl-ckks-weight"


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """The bytes a client signs: its arrays flattened in order, float32 little-endian."""
    flat = ParamSpec.infer(list(arrays)).flatten(list(arrays))
    return flat.numpy().astype("<f4").tobytes()


def sign_reply(
    arrays: Sequence[np.ndarray], key: Any, task: int, server_round: int, domain: Any
) -> ConfigRecord:
    """The ConfigRecord a client adds to its train reply when the server commits rounds.

    ``key`` is the client's secp256k1 private key (32 bytes or hex); ``domain`` is the
    ledger's :attr:`~bcfl_engine.chain.Ledger.domain` (chain id and registry address).
    """
    from ..round import sign_payload

    payload = sign_payload(key, task, server_round, encode_arrays(arrays), domain)
    return ConfigRecord({"address": payload.client, "signature": bytes(payload.signature or b"")})


def aggregate_arrays(
    arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float] | None,
    *,
    rule: str = "mean",
    f: int = 0,
    params: dict[str, Any] | None = None,
    pre: Sequence[Any] = (),
    backend: str | None = None,
) -> list[np.ndarray]:
    """Aggregate clients' lists of arrays (Flower's NDArrays) with ``rule``; same structure out.

    ``weights`` (e.g. example counts) go to weighted rules and are ignored by the others.
    """
    info = rules.get(rule)
    w = torch.tensor(list(weights), dtype=torch.float64) if weights and info.weighted else None
    out = aggregate(
        [list(a) for a in arrays],
        rule=rule,
        f=f,
        weights=w,
        backend=backend,
        pre=pre,
        **(params or {}),
    )
    return [np.asarray(a) for a in out]


def commit_arrays(
    rnd: AggregationRound,
    arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    signatures: Sequence[tuple[str, bytes] | None],
    names: Sequence[str],
) -> tuple[list[np.ndarray], list[str]]:
    """Run one round through the pipeline: submit each client's signed arrays, aggregate,
    commit. Returns the aggregate in the clients' structure and the rejected replies.

    A reply that is unsigned, mis-signed, from a non-participant, of the wrong size or not
    finite is left out of the round (named in the second list), as a Byzantine-robust
    aggregator must; PayloadError when no reply is left.
    """
    from ..round import Payload

    spec = ParamSpec.infer(list(arrays[0]))
    rejected = []
    for a, w, sig, name in zip(arrays, weights, signatures, names, strict=True):
        if sig is None:
            rejected.append(f"{name}: no signature (ConfigRecord {RECORD_KEY!r}; see sign_reply)")
            continue
        try:
            rnd.submit(Payload(sig[0], encode_arrays(a), sig[1], weight=int(w)))
        except (PayloadError, ShapeMismatch, NonFiniteUpdate, InvalidArgument) as exc:
            rejected.append(f"{name}: {exc}")
    if len(rnd) == 0:
        raise PayloadError(f"round {rnd.round}: no valid reply; rejected: {'; '.join(rejected)}")
    result = rnd.finalize()
    out = spec.unflatten(torch.as_tensor(result.update))
    return [np.asarray(a) for a in out], rejected


def decrypt_global(
    arrays: ArrayRecord, secret_context: Any, template: Sequence[np.ndarray]
) -> list[np.ndarray]:
    """Client side of secure aggregation: the weighted mean inside a CKKS strategy's result.

    ``template`` gives the shapes and dtypes of the model's arrays.
    """
    from .. import he

    blob = arrays[CKKS_KEY].numpy().tobytes()
    total = float(arrays[CKKS_WEIGHT_KEY].numpy()[0])
    spec = ParamSpec.infer(list(template))
    vec = torch.as_tensor(
        np.asarray(he.decrypt(blob, secret_context), dtype=np.float32)[: spec.dim]
    )
    return [np.asarray(a) for a in spec.unflatten(vec / total)]


class EngineFedAvg(FedAvg):
    """Flower's FedAvg with aggregation by bcfl_engine: any rule, a chain commit, CKKS.

    Parameters
    ----------
    rule, f, params, pre, backend : as in :func:`bcfl_engine.aggregate` (``params`` holds the
        rule's extra parameters).
    rounds : optional ``rounds(server_round) -> AggregationRound``; when given, every server
        round is collected, aggregated and committed through it (its rule is used); a reply
        without a valid signature (:func:`sign_reply`) is left out and listed in
        ``rejected[server_round]``.
    secure : None or "ckks": clients send ciphertexts, the strategy sums them homomorphically;
        ``he_context`` is then the public context bytes (:meth:`bcfl_engine.he.Keys.public_context`).
    **kwargs : passed to ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``,
        ``min_available_nodes``, ``weighted_by_key``, ...).
    """

    def __init__(
        self,
        rule: str = "mean",
        f: int = 0,
        *,
        params: dict[str, Any] | None = None,
        pre: Sequence[Any] = (),
        backend: str | None = None,
        rounds: Callable[[int], AggregationRound] | None = None,
        secure: str | None = None,
        he_context: bytes | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        if secure not in (None, "ckks"):
            raise InvalidArgument(f"secure must be None or 'ckks'; got {secure!r}")
        if secure == "ckks" and (rule != "mean" or pre):
            raise InvalidArgument(
                f"CKKS aggregation is a weighted sum: rule must be 'mean' with no pre steps; got {rule!r}"
            )
        self.rule, self.f, self.params, self.pre = rule, f, dict(params or {}), tuple(pre)
        if secure == "ckks" and he_context is None:
            raise InvalidArgument("secure='ckks' needs he_context (the public context bytes)")
        self.backend, self.rounds, self.secure, self.he_context = (
            backend,
            rounds,
            secure,
            he_context,
        )
        self.last_result: Any = None
        self.rejected: dict[int, list[str]] = {}  # server round -> replies left out, and why

    def summary(self) -> None:
        super().summary()
        chain = "committed per round" if self.rounds else "off"
        log(
            20,
            "\t└──> bcfl_engine: rule=%s f=%d secure=%s chain=%s",
            self.rule,
            self.f,
            self.secure,
            chain,
        )

    def _weights(self, replies: list[Message]) -> list[float]:
        out = []
        for msg in replies:
            metrics = next(iter(msg.content.metric_records.values()))
            out.append(float(metrics[self.weighted_by_key]))  # type: ignore[arg-type]
        return out

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the train replies of ``server_round`` with the engine."""
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=self.secure is None)
        if not valid:
            return None, None
        contents = [msg.content for msg in valid]
        metrics = self.train_metrics_aggr_fn(contents, self.weighted_by_key)
        weights = self._weights(valid)
        if self.secure == "ckks":
            return self._aggregate_ckks(valid, weights), metrics
        records = [next(iter(c.array_records.values())) for c in contents]
        keys = list(records[0].keys())
        for msg, rec in zip(valid, records, strict=True):
            if list(rec.keys()) != keys:
                raise PayloadError(
                    f"node {msg.metadata.src_node_id}: arrays {list(rec.keys())} differ from {keys}"
                )
        arrays = [[rec[k].numpy() for k in keys] for rec in records]
        if self.rounds is not None:
            names = [f"node {m.metadata.src_node_id}" for m in valid]
            rnd = self.rounds(server_round)
            out, self.rejected[server_round] = commit_arrays(
                rnd, arrays, weights, self._signatures(valid), names
            )
            for reason in self.rejected[server_round]:
                log(30, "bcfl_engine: round %d left out %s", server_round, reason)
        else:
            out = aggregate_arrays(
                arrays,
                weights,
                rule=self.rule,
                f=self.f,
                params=self.params,
                pre=self.pre,
                backend=self.backend,
            )
        self.last_result = out
        return ArrayRecord(
            {k: Array(np.ascontiguousarray(a)) for k, a in zip(keys, out, strict=True)}
        ), metrics

    def _signatures(self, replies: list[Message]) -> list[tuple[str, bytes] | None]:
        out: list[tuple[str, bytes] | None] = []
        for msg in replies:
            rec = msg.content.config_records.get(RECORD_KEY)
            if rec is None or "address" not in rec or "signature" not in rec:
                out.append(None)
            else:
                out.append((str(rec["address"]), bytes(rec["signature"])))  # type: ignore[arg-type]
        return out

    def _aggregate_ckks(self, replies: list[Message], weights: list[float]) -> ArrayRecord:
        from .. import he

        blobs = []
        for msg in replies:
            rec = msg.content.config_records.get(RECORD_KEY)
            if rec is None or "ckks" not in rec:
                raise PayloadError(
                    f"node {msg.metadata.src_node_id}: no ciphertext under {RECORD_KEY!r}/ckks"
                )
            blobs.append(bytes(rec["ckks"]))  # type: ignore[arg-type]
        int_weights = [round(w) for w in weights]
        if any(w <= 0 or abs(w - round(w)) > 1e-9 for w in weights):
            raise InvalidArgument(
                f"CKKS weights are positive integers (example counts); got {weights}"
            )
        agg = he.aggregate(blobs, weights=int_weights, context=self.he_context)
        self.last_result = agg
        return ArrayRecord(
            {
                CKKS_KEY: Array(np.frombuffer(agg, dtype=np.uint8).copy()),
                CKKS_WEIGHT_KEY: Array(np.array([float(sum(int_weights))], dtype=np.float64)),
            }
        )
