"""bcfl_engine as Flower's aggregator: strategies for the Message API (flwr >= 1.20).

Flower's own names run on the engine when imported from here: ``FedAvg``, ``FedMedian``,
``FedTrimmedAvg``, ``Krum``, ``MultiKrum``, ``Bulyan`` (:mod:`.flower_dropin`; swapping the
import line is the whole change).

:class:`EngineFedAvg` is Flower's ``flwr.serverapp.strategy.FedAvg`` with ``aggregate_train``
delegated to :func:`bcfl_engine.aggregate`, so any rule of :data:`bcfl_engine.rules.RULES`
(median, trimmed mean, Krum, geometric median, ...) runs on the engine's kernels instead of
Flower's numpy loops. Given ``rounds`` (a factory of
:class:`~bcfl_engine.round.AggregationRound`), each server round instead goes through the
round pipeline: every reply is checked against its client's signature, stored, aggregated,
and the round's Merkle root and result digest are committed to the ledger.

With ``secure="ckks"`` the clients send CKKS ciphertexts (:func:`bcfl_engine.he.encrypt`) and
the strategy returns their homomorphic weighted sum; the clients, who hold the secret key,
decrypt it (:func:`decrypt_global`). With ``rounds`` whose rounds carry a multiparty key the
server holds no key: the clients' key parties decrypt at the strategy's request, and a robust
rule runs on the decrypted means of buckets drawn from the chain (:mod:`.flower_secure`).

What a client puts in its reply, besides Flower's usual ``ArrayRecord`` and ``MetricRecord``
(with the weight under ``weighted_by_key``): a ``ConfigRecord`` under :data:`RECORD_KEY` with
``address`` and ``signature`` (:func:`sign_reply`, over the arrays and the weight) when the
server commits to a chain, and ``ckks`` (the ciphertext bytes) under secure aggregation.

Every strategy here survives what Flower survives: a reply with NaN or an infinity is left
out with a warning, too few replies for the rule follow ``on_too_few``
(:mod:`.flower_policy`), and arrays keep their shapes and dtypes (:mod:`.flower_arrays`).

:class:`DifferentialPrivacyServerSideFixedClipping` (Flower's name and arguments) adds central
differential privacy around any of these strategies (:mod:`.flower_dp`).

The legacy ``Strategy.aggregate_fit`` interface is in :mod:`.flower_legacy`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .. import rules
from ..errors import (
    InvalidArgument,
    MissingDependency,
    PayloadError,
)
from ..updates import ParamSpec

try:
    from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord
    from flwr.common.logger import log
    from flwr.serverapp.strategy import FedAvg as FlowerFedAvg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None

from .flower_arrays import SELECTION_RULES, engine_aggregate
from .flower_chain import (
    RECORD_KEY,
    ROUND_KEY,
    ChainRounds,
    check_round,
    commit_arrays,
    encode_arrays,
    integer_weight,
    round_options,
    sign_reply,
)
from .flower_dp import DifferentialPrivacyServerSideFixedClipping
from .flower_dropin import (
    Bulyan,
    EngineStrategy,
    FedAvg,
    FedMedian,
    FedTrimmedAvg,
    Krum,
    MultiKrum,
    Replies,
    to_record,
)
from .flower_policy import OnTooFew, resolve_f, usable_weights, warn

if TYPE_CHECKING:
    from ..round import AggregationRound

CKKS_KEY = "bcfl-ckks"
CKKS_WEIGHT_KEY = "bcfl-ckks-weight"


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
    """Aggregate clients' lists of arrays (Flower's NDArrays) with ``rule``; same structure,
    shapes and dtypes out (see :func:`.flower_arrays.engine_aggregate`).

    ``weights`` (e.g. example counts) go to weighted rules and are ignored by the others.
    """
    w = list(weights) if weights else [1.0] * len(arrays)
    out, _ = engine_aggregate(arrays, w, rule=rule, f=f, params=params, pre=pre, backend=backend)
    return out


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


class EngineFedAvg(EngineStrategy, FlowerFedAvg):
    """Flower's FedAvg with aggregation by bcfl_engine: any rule, a chain commit, CKKS.

    Parameters
    ----------
    rule, f, params, pre, backend : as in :func:`bcfl_engine.aggregate` (``params`` holds the
        rule's extra parameters). Arrays keep their shapes and dtypes; mean, median, trimmed
        mean, Krum, Multi-Krum and Bulyan aggregate float64 arrays in float64.
    rounds : optional ``rounds(server_round) -> AggregationRound``; when given, every server
        round is collected, aggregated and committed through it. The rounds must aggregate
        with this strategy's rule, ``f``, ``params`` and ``pre`` (build them with
        ``**strategy.round_options``); a round that does not is refused with
        InvalidArgument at its first use. A reply without a valid signature
        (:func:`sign_reply`) is left out and listed in ``rejected[server_round]``.
    secure : None or "ckks": clients send ciphertexts, the strategy sums them homomorphically;
        ``he_context`` is then the public context bytes (:meth:`bcfl_engine.he.Keys.public_context`).
    on_too_few : "skip" (default) or "lower_f" (:class:`~.flower_policy.OnTooFew`): what a
        round with fewer replies than the rule's precondition needs does. A reply with NaN or
        an infinity is always left out with a warning.
    **kwargs : passed to ``flwr.serverapp.strategy.FedAvg`` (``fraction_train``,
        ``min_available_nodes``, ``weighted_by_key``, ...).

    Train metrics are aggregated over the replies that went into the model: those left out
    do not count, and a selection rule (Krum, Multi-Krum, Bulyan) counts the selected ones.
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
        on_too_few: OnTooFew | str = OnTooFew.SKIP,
        **kwargs: Any,
    ) -> None:
        super().__init__(backend=backend, on_too_few=on_too_few, **kwargs)
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        info.check_precondition(info.min_clients(f if isinstance(f, int) else 0), f)
        if secure not in (None, "ckks"):
            raise InvalidArgument(f"secure must be None or 'ckks'; got {secure!r}")
        if secure == "ckks" and (rule != "mean" or pre) and rounds is None:
            raise InvalidArgument(
                f"CKKS aggregation is a weighted sum: rule must be 'mean' with no pre steps; got "
                f"{rule!r} (a robust rule runs on buckets under a multiparty key: rounds=)"
            )
        self.rule, self.f, self.params, self.pre = rule, f, dict(params or {}), tuple(pre)
        if secure == "ckks" and he_context is None and rounds is None:
            raise InvalidArgument("secure='ckks' needs he_context (the public context bytes)")
        self.rounds, self.secure, self.he_context = rounds, secure, he_context
        self.last_result: Any = None
        self.rejected: dict[int, list[str]] = {}  # server round -> replies left out, and why
        self.chain_rounds = ChainRounds()
        self.record_key = RECORD_KEY
        self.grid: Any = None  # kept from configure_train: a multiparty round asks its parties
        self.template: list[np.ndarray] = []  # the model's arrays, the shapes of a result
        self.decrypt_timeout = 600.0

    @property
    def round_options(self) -> dict[str, Any]:
        """The keyword arguments that make an AggregationRound aggregate as this strategy."""
        return round_options(self)

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

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Any
    ) -> Iterable[Message]:
        """Flower's, plus, when rounds are committed, the registry round the clients sign for
        (:data:`ROUND_KEY`; see :class:`~.flower_chain.ChainRounds`)."""
        if self.rounds is not None:
            config[ROUND_KEY] = self.chain_rounds.of(server_round)
        if self.secure == "ckks" and self.rounds is not None:
            self.grid, self.template = grid, list(arrays.to_numpy_ndarrays())
        return super().configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Aggregate the train replies of ``server_round`` with the engine."""
        if self.secure == "ckks":
            return self._train_ckks(server_round, replies)
        plain = not self.pre and self.rounds is None
        stream = plain and self.rule == "mean" and self.f == 0
        select = plain and self.rule in SELECTION_RULES
        out = self._train(server_round, replies, self._combine, stream=stream, select=select)
        if self.rounds is not None:
            self.chain_rounds.settle(out[0] is not None)
        return out

    def _streamed(self, out: list[np.ndarray]) -> None:
        self.last_result = out

    def _combine(self, got: Replies, server_round: int) -> tuple[list[np.ndarray] | None, Any]:
        if self.rounds is not None:
            return self._commit(got, server_round)
        if self.rule == "mean" and not usable_weights(
            range(len(got)), got.weights, got.names, server_round
        ):
            return None, None
        f = resolve_f(self.rule, len(got), self.f, self.on_too_few, server_round)
        if f is None:
            return None, None
        params = dict(self.params)
        if self.rule == "multi_krum" and params.get("m", 0) > len(got):
            warn(
                server_round, "multi_krum: m=%s > %d replies; averaging all", params["m"], len(got)
            )
            params["m"] = len(got)
        out, chosen = engine_aggregate(
            got.arrays,
            got.weights,
            rule=self.rule,
            f=f,
            params=params,
            pre=self.pre,
            backend=self.backend,
            stack=got.stacked,
            pool=self.stack_pool,
            dist=got.dist,
        )
        self.last_result = out
        return out, chosen

    def _commit(self, got: Replies, server_round: int) -> tuple[list[np.ndarray] | None, Any]:
        assert self.rounds is not None
        rnd = self.rounds(self.chain_rounds.of(server_round))
        check_round(rnd, self.rule, self.f, self.params, self.pre)
        signatures = [self._signature(c) for c in got.contents]
        out, rejected, used = commit_arrays(
            rnd, got.arrays, got.weights, signatures, got.names, on_too_few=self.on_too_few
        )
        self.rejected[server_round] = [*got.left_out, *rejected]
        for reason in rejected:
            warn(server_round, "left out %s", reason)
        self.last_result = out
        return out, used

    @staticmethod
    def _signature(content: Any) -> tuple[str, bytes] | None:
        rec = content.config_records.get(RECORD_KEY)
        if rec is None or "address" not in rec or "signature" not in rec:
            return None
        return str(rec["address"]), bytes(rec["signature"])

    def _parseable(self, blobs: list[bytes], names: list[str], server_round: int) -> list[int]:
        """Indices of the ciphertexts that parse against the public context and the first
        good one (same length, level and layout); each other one is named in a warning."""
        from .. import he

        batch = he.CiphertextBatch(self.he_context, len(blobs))
        ok = []
        for i, blob in enumerate(blobs):
            try:
                batch.add(names[i], blob)
            except PayloadError as exc:
                warn(server_round, "left out %s: %s", names[i], exc)
            else:
                ok.append(i)
        return ok

    def _train_ckks(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        from .. import he

        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=False)
        if self.rounds is not None:  # a multiparty key: the parties decrypt, no key here
            from .flower_secure import train_multiparty

            return train_multiparty(self, server_round, valid)
        blobs: list[bytes] = []
        weights: list[int] = []
        kept: list[Any] = []
        names: list[str] = []
        for msg in valid:
            name = f"node {msg.metadata.src_node_id}"
            rec = msg.content.config_records.get(RECORD_KEY)
            metrics = list(msg.content.metric_records.values())
            w = metrics[0].get(self.weighted_by_key) if metrics else None
            count = integer_weight(w) if isinstance(w, (int, float)) else None
            if rec is None or "ckks" not in rec:
                warn(server_round, "left out %s: no ciphertext under %r/ckks", name, RECORD_KEY)
            elif count is None:
                warn(server_round, "left out %s: CKKS weight %r is not a positive integer", name, w)
            else:
                blobs.append(bytes(rec["ckks"]))  # type: ignore[arg-type]
                weights.append(count)
                kept.append(msg.content)
                names.append(name)
        if blobs:
            try:
                agg = he.aggregate(blobs, weights=weights, context=self.he_context)
            except PayloadError:  # one bad ciphertext: find it, leave it out, sum the others
                ok = self._parseable(blobs, names, server_round)
                blobs, weights, kept = (
                    [blobs[i] for i in ok],
                    [weights[i] for i in ok],
                    [kept[i] for i in ok],
                )
                agg = he.aggregate(blobs, weights=weights, context=self.he_context) if ok else None
        if not blobs:
            return None, None
        self.last_result = agg
        assert agg is not None
        record = ArrayRecord(
            {
                CKKS_KEY: Array(np.frombuffer(agg, dtype=np.uint8).copy()),
                CKKS_WEIGHT_KEY: Array(np.array([float(sum(weights))], dtype=np.float64)),
            }
        )
        return record, self.train_metrics_aggr_fn(kept, self.weighted_by_key)


__all__ = [
    "CKKS_KEY",
    "CKKS_WEIGHT_KEY",
    "RECORD_KEY",
    "ROUND_KEY",
    "Bulyan",
    "DifferentialPrivacyServerSideFixedClipping",
    "EngineFedAvg",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "OnTooFew",
    "aggregate_arrays",
    "commit_arrays",
    "decrypt_global",
    "encode_arrays",
    "sign_reply",
    "to_record",
]
