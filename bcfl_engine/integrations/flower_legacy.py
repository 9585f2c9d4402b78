"""bcfl_engine as the aggregator of Flower's legacy strategy interface (``aggregate_fit``).

:class:`LegacyEngineFedAvg` is ``flwr.server.strategy.FedAvg`` (the ``Strategy`` of
``start_server`` / ``ServerAppComponents``) with ``aggregate_fit`` delegated to
:func:`bcfl_engine.aggregate`, or, given ``rounds``, to the round pipeline with a chain commit
(the client's address and signature travel in ``FitRes.metrics`` as ``bcfl-address`` and
``bcfl-signature``). New code should use :class:`.flower.EngineFedAvg` on the Message API.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from .. import rules
from ..errors import InvalidArgument, MissingDependency
from .flower import aggregate_arrays, commit_arrays

try:
    from flwr.common import (
        FitRes,
        Parameters,
        Scalar,
        ndarrays_to_parameters,
        parameters_to_ndarrays,
    )
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy import FedAvg
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None

if TYPE_CHECKING:
    from ..round import AggregationRound

ADDRESS_KEY = "bcfl-address"
SIGNATURE_KEY = "bcfl-signature"


class LegacyEngineFedAvg(FedAvg):
    """Flower's legacy FedAvg with aggregation by bcfl_engine.

    Parameters
    ----------
    rule, f, params, pre, backend : as in :func:`bcfl_engine.aggregate`.
    rounds : optional ``rounds(server_round) -> AggregationRound`` that collects, aggregates
        and commits each round (clients sign; see the module docstring); results without a
        valid signature are left out and listed in ``rejected[server_round]``.
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
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if rules.get(rule).kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        self.rule, self.f, self.params, self.pre = rule, f, dict(params or {}), tuple(pre)
        self.backend, self.rounds = backend, rounds
        self.rejected: dict[int, list[str]] = {}  # server round -> results left out, and why

    def __repr__(self) -> str:
        return f"LegacyEngineFedAvg(rule={self.rule!r}, f={self.f})"

    def aggregate_fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Aggregate the fit results of ``server_round`` with the engine."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        arrays = [parameters_to_ndarrays(res.parameters) for _, res in results]
        weights = [float(res.num_examples) for _, res in results]
        if self.rounds is not None:
            sigs: list[tuple[str, bytes] | None] = [
                (str(res.metrics[ADDRESS_KEY]), bytes(res.metrics[SIGNATURE_KEY]))  # type: ignore[arg-type]
                if ADDRESS_KEY in res.metrics and SIGNATURE_KEY in res.metrics
                else None
                for _, res in results
            ]
            names = [f"client {getattr(proxy, 'cid', i)}" for i, (proxy, _) in enumerate(results)]
            out, self.rejected[server_round] = commit_arrays(
                self.rounds(server_round), arrays, weights, sigs, names
            )
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
        metrics: dict[str, Scalar] = {}
        if self.fit_metrics_aggregation_fn:
            metrics = self.fit_metrics_aggregation_fn(
                [(res.num_examples, res.metrics) for _, res in results]
            )
        return ndarrays_to_parameters(out), metrics
