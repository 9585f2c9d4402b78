"""bcfl_engine as the aggregator of Flower's legacy strategy interface (``aggregate_fit``).

:class:`LegacyEngineFedAvg` is ``flwr.server.strategy.FedAvg`` (the ``Strategy`` of
``start_server`` / ``ServerAppComponents``) with ``aggregate_fit`` delegated to
:func:`bcfl_engine.aggregate`, or, given ``rounds``, to the round pipeline with a chain commit
(the client's address and signature travel in ``FitRes.metrics`` as ``bcfl-address`` and
``bcfl-signature``). New code should use :class:`.flower.EngineFedAvg` on the Message API.

Flower's legacy strategy names on the engine (``FedAvg``, ``FedMedian``, ``FedTrimmedAvg``,
``Krum``, ``Bulyan``) are importable from here too (:mod:`.flower_legacy_dropin`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from .. import rules
from ..errors import InvalidArgument, MissingDependency
from .flower_arrays import engine_aggregate
from .flower_chain import ROUND_KEY, ChainRounds, check_round, commit_arrays, round_options
from .flower_npy import StackPool, tensors_to_arrays
from .flower_policy import OnTooFew, as_policy, resolve_f, screen, usable_weights, warn

try:
    from flwr.common import (
        FitRes,
        Parameters,
        Scalar,
    )
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg as FlowerLegacyFedAvg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None

from .flower_legacy_dropin import Bulyan, FedAvg, FedMedian, FedTrimmedAvg, Krum, to_parameters

if TYPE_CHECKING:
    from ..round import AggregationRound

ADDRESS_KEY = "bcfl-address"
SIGNATURE_KEY = "bcfl-signature"


class LegacyEngineFedAvg(FlowerLegacyFedAvg):
    """Flower's legacy FedAvg with aggregation by bcfl_engine.

    Parameters
    ----------
    rule, f, params, pre, backend : as in :func:`bcfl_engine.aggregate`. Arrays keep their
        shapes and dtypes, float64 stays float64 (see :class:`.flower.EngineFedAvg`).
    rounds : optional ``rounds(server_round) -> AggregationRound`` that collects, aggregates
        and commits each round (clients sign; see the module docstring); results without a
        valid signature are left out and listed in ``rejected[server_round]``. The rounds
        must aggregate with this strategy's rule, ``f``, ``params`` and ``pre``.
    on_too_few : "skip" (default) or "lower_f": what a round with fewer results than the
        rule's precondition needs does (:class:`~.flower_policy.OnTooFew`); a result with NaN
        or an infinity is left out with a warning.
    **kwargs : passed to ``flwr.server.strategy.FedAvg``.
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
        on_too_few: OnTooFew | str = OnTooFew.SKIP,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        info.check_precondition(info.min_clients(f if isinstance(f, int) else 0), f)
        self.rule, self.f, self.params, self.pre = rule, f, dict(params or {}), tuple(pre)
        self.backend, self.rounds, self.on_too_few = backend, rounds, as_policy(on_too_few)
        self.stack_pool = StackPool()
        self.rejected: dict[int, list[str]] = {}  # server round -> results left out, and why
        self.chain_rounds = ChainRounds()

    @property
    def round_options(self) -> dict[str, Any]:
        """The keyword arguments that make an AggregationRound aggregate as this strategy."""
        return round_options(self)

    def __repr__(self) -> str:
        return f"LegacyEngineFedAvg(rule={self.rule!r}, f={self.f})"

    def configure_fit(
        self, server_round: int, parameters: Parameters, client_manager: Any
    ) -> list[tuple[ClientProxy, Any]]:
        """Flower's, plus, when rounds are committed, the registry round the clients sign for
        (``FitIns.config[ROUND_KEY]``; see :class:`~.flower_chain.ChainRounds`)."""
        out = super().configure_fit(server_round, parameters, client_manager)
        if self.rounds is not None:
            for _, ins in out:
                ins.config[ROUND_KEY] = self.chain_rounds.of(server_round)
        return out

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate the fit results of ``server_round`` with the engine."""
        out = self._fit(server_round, results, failures)
        if self.rounds is not None:
            self.chain_rounds.settle(out[0] is not None)
        return out

    def _fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        if not results or (failures and not self.accept_failures):
            return None, {}
        arrays = [tensors_to_arrays(res.parameters.tensors) for _, res in results]
        weights: list[Any] = [res.num_examples for _, res in results]
        names = [f"client {getattr(proxy, 'cid', i)}" for i, (proxy, _) in enumerate(results)]
        keys = [str(j) for j in range(len(arrays[0]))]
        kept = screen(arrays, weights, names, keys, server_round)
        if not kept:
            warn(server_round, "every result was left out: no aggregate this round")
            return None, {}
        out, used = self._aggregate(server_round, results, arrays, weights, names, kept)
        if out is None:
            return None, {}
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn(
                [(results[i][1].num_examples, results[i][1].metrics) for i in used]
            )
        return to_parameters(out), metrics

    def _aggregate(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        arrays: list[list[np.ndarray]],
        weights: list[Any],
        names: list[str],
        kept: list[int],
    ) -> tuple[list[np.ndarray] | None, list[int]]:
        if self.rounds is not None:
            rnd = self.rounds(self.chain_rounds.of(server_round))
            check_round(rnd, self.rule, self.f, self.params, self.pre)
            sigs: list[tuple[str, bytes] | None] = []
            for i in kept:
                m = results[i][1].metrics
                ok = ADDRESS_KEY in m and SIGNATURE_KEY in m
                sigs.append((str(m[ADDRESS_KEY]), bytes(m[SIGNATURE_KEY])) if ok else None)  # type: ignore[arg-type]
            out, self.rejected[server_round], used = commit_arrays(
                rnd,
                [arrays[i] for i in kept],
                [weights[i] for i in kept],
                sigs,
                [names[i] for i in kept],
                on_too_few=self.on_too_few,
            )
            for reason in self.rejected[server_round]:
                warn(server_round, "left out %s", reason)
            return out, [kept[i] for i in used or []]
        w = [float(weights[i]) for i in kept]
        if self.rule == "mean" and not usable_weights(
            range(len(kept)), w, [names[i] for i in kept], server_round
        ):
            return None, []
        f = resolve_f(self.rule, len(kept), self.f, self.on_too_few, server_round)
        if f is None:
            return None, []
        out, chosen = engine_aggregate(
            [arrays[i] for i in kept],
            w,
            rule=self.rule,
            f=f,
            params=self.params,
            pre=self.pre,
            backend=self.backend,
            pool=self.stack_pool,
        )
        return out, [kept[i] for i in (range(len(kept)) if chosen is None else chosen)]


__all__ = [
    "ADDRESS_KEY",
    "SIGNATURE_KEY",
    "Bulyan",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "LegacyEngineFedAvg",
]
