"""Flower's legacy strategy names (``flwr.server.strategy``), aggregating on the engine.

``from bcfl_engine.integrations.flower_legacy import FedAvg, FedMedian, FedTrimmedAvg, Krum,
Bulyan`` gives subclasses of Flower's legacy strategies with their constructor arguments
(``num_malicious_clients``, ``num_clients_to_keep``, ``beta``, ...) and their semantics:

- FedAvg: the mean weighted by example counts; FedMedian; FedTrimmedAvg (``int(beta * n)``
  values dropped at each end);
- Krum: the best Krum score (``max(1, n - f - 2)`` neighbours), or with
  ``num_clients_to_keep > 0`` the weighted mean of that many best-scored results;
- Bulyan: iterated Krum selects ``theta = n - 2f`` (one at a time, each among those left),
  then per coordinate the mean of the ``theta - 2f`` values closest to the median.

As the Message API drop-ins (:mod:`.flower_dropin`), they keep each array's shape and dtype,
leave out a result with NaN or an infinity (and its metrics) with a warning, and where
Flower's legacy Bulyan raises for too few results (``n < 4f + 3``) they follow
``on_too_few`` (:class:`~.flower_policy.OnTooFew`). Added keyword-only arguments:
``backend`` and ``on_too_few``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from .. import rules
from ..errors import InvalidArgument, MissingDependency
from ..rules._distances import iterated_krum
from .flower_arrays import (
    Stack,
    bulyan_coordinates,
    coordinatewise,
    flower_krum_order,
    layout,
    selected_mean,
    weighted_mean,
)
from .flower_npy import StackPool, arrays_to_tensors, tensors_to_arrays
from .flower_policy import (
    OnTooFew,
    as_policy,
    finite_rows,
    resolve_f,
    screen,
    usable_weights,
    warn,
)
from .flower_rows import Unstacked, rows_sq_dists
from .flower_stream import streamed_mean

try:
    from flwr.common import (
        FitRes,
        Parameters,
        Scalar,
    )
    from flwr.server import strategy as legacy
    from flwr.server.client_proxy import ClientProxy
    from flwr.server.strategy.aggregate import aggregate_krum
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None


def to_parameters(arrays: list[np.ndarray]) -> Parameters:
    """Arrays as Flower's legacy ``Parameters`` (.npy bytes, each serialized once)."""
    return Parameters(tensors=arrays_to_tensors(arrays), tensor_type="numpy.ndarray")


# combine(stack, weights, server_round): a Stack, or under _fit(select=True) possibly an
# Unstacked (a selection's len, sq_dists and take only).
Combine = Callable[[Any, list[float], int], tuple[list[np.ndarray] | None, list[int] | None]]


class LegacyEngineStrategy:
    """What the legacy drop-ins share: screening results, metrics of those that went in."""

    backend: str | None
    on_too_few: OnTooFew
    accept_failures: bool
    fit_metrics_aggregation_fn: Any

    def __init__(
        self,
        *args: Any,
        backend: str | None = None,
        on_too_few: OnTooFew | str = OnTooFew.SKIP,
        **kwargs: Any,
    ) -> None:
        """Flower's arguments, plus ``backend`` and ``on_too_few`` (the engine's)."""
        super().__init__(*args, **kwargs)
        self.backend, self.on_too_few = backend, as_policy(on_too_few)
        self.stack_pool = StackPool()

    def _fit(
        self,
        server_round: int,
        results: list[tuple[ClientProxy, FitRes]],
        failures: list[tuple[ClientProxy, FitRes] | BaseException],
        combine: Combine,
        stream: bool = False,
        select: bool = False,
    ) -> tuple[Parameters | None, dict[str, Scalar]]:
        """Flower's checks, the results screened and ``combine``d. ``stream``: the weighted
        mean, without a stack where it can (:func:`~.flower_stream.streamed_mean`).
        ``select``: ``combine`` uses only ``len``, ``sq_dists`` and ``take``, so it gets the
        results unstacked where their distances can be read off them
        (:class:`~.flower_rows.Unstacked`)."""
        if not results or (failures and not self.accept_failures):
            return None, {}
        arrays = [tensors_to_arrays(res.parameters.tensors) for _, res in results]
        weights: list[Any] = [res.num_examples for _, res in results]
        names = [f"client {getattr(proxy, 'cid', i)}" for i, (proxy, _) in enumerate(results)]
        keys = [str(j) for j in range(len(arrays[0]))]
        kept = screen(arrays, weights, names, keys, server_round, finite=False)
        streamed = None
        if stream and kept:  # None where a weight is 0 or a value not finite: stacked path
            streamed = streamed_mean(
                [arrays[i] for i in kept], [float(weights[i]) for i in kept], self.backend
            )
        if streamed is not None:
            return to_parameters(streamed), self._fit_metrics(results, kept)
        if select and kept:
            sub = [arrays[i] for i in kept]
            dist = rows_sq_dists(sub, layout(sub[0])[0], self.backend)  # None: NaN, ...
            if dist is not None:
                unstacked = Unstacked(sub, dist, self.stack_pool)
                out, _ = combine(unstacked, [float(weights[i]) for i in kept], server_round)
                if out is None:
                    return None, {}
                return to_parameters(out), self._fit_metrics(results, kept)
        stack = Stack.of([arrays[i] for i in kept], self.stack_pool) if kept else None
        if stack is not None:
            rows = finite_rows(stack, [names[i] for i in kept], keys, server_round)
            if len(rows) < len(kept):
                stack, kept = stack.take(rows), [kept[r] for r in rows]
            kept = kept if rows else []
        if stack is None or not kept:
            warn(server_round, "every result was left out: no aggregate this round")
            return None, {}
        out, _ = combine(stack, [float(weights[i]) for i in kept], server_round)
        if out is None:
            return None, {}
        return to_parameters(out), self._fit_metrics(results, kept)

    def _fit_metrics(
        self, results: list[tuple[ClientProxy, FitRes]], kept: list[int]
    ) -> dict[str, Scalar]:
        """As Flower's: the metrics of every result that went in."""
        if not self.fit_metrics_aggregation_fn:
            return {}
        return self.fit_metrics_aggregation_fn(
            [(results[i][1].num_examples, results[i][1].metrics) for i in kept]
        )


class FedAvg(LegacyEngineStrategy, legacy.FedAvg):
    """Flower's legacy FedAvg on the engine (see the module docstring)."""

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        """The mean of the results weighted by their example counts."""

        def combine(stack: Stack, w: list[float], r: int) -> Any:
            if not usable_weights(range(len(w)), w, [f"result {i}" for i in range(len(w))], r):
                return None, None
            return weighted_mean(stack, w, self.backend), None

        return self._fit(server_round, results, failures, combine, stream=True)


class FedMedian(LegacyEngineStrategy, legacy.FedMedian):
    """Flower's legacy FedMedian on the engine (see the module docstring)."""

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        """The coordinate-wise median of the results."""
        return self._fit(
            server_round,
            results,
            failures,
            lambda s, w, r: (coordinatewise(s, "median", 0, self.backend), None),
        )


class FedTrimmedAvg(LegacyEngineStrategy, legacy.FedTrimmedAvg):
    """Flower's legacy FedTrimmedAvg on the engine (see the module docstring)."""

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        """Per coordinate, the mean after dropping ``int(beta * n)`` values at each end."""

        def combine(stack: Stack, w: list[float], r: int) -> Any:
            cut = int(self.beta * len(stack))
            return coordinatewise(stack, "trimmed_mean", cut, self.backend), None

        return self._fit(server_round, results, failures, combine)


class Krum(LegacyEngineStrategy, legacy.Krum):
    """Flower's legacy Krum (and Multi-Krum with ``num_clients_to_keep``) on the engine."""

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        """The best-scored result, or the weighted mean of the ``num_clients_to_keep`` best."""

        def combine(stack: Stack | Unstacked, w: list[float], r: int) -> Any:
            n, f = len(stack), int(self.num_malicious_clients)
            pre = rules.get("krum").precondition
            if pre is not None and not pre.holds(n, f):
                warn(
                    r,
                    "Krum with %d results and num_malicious_clients=%d: Krum's guarantee (%s) "
                    "does not hold; selecting as Flower does",
                    n,
                    f,
                    pre.text,
                )
            order = flower_krum_order(stack.sq_dists(self.backend), f)
            keep = int(self.num_clients_to_keep)
            if keep <= 0:
                best = stack.take(order[:1])
                return best.unstack(best.x32[0], best.x64[0]), None
            if keep > n:  # Flower's legacy Krum slices from n - keep < 0: the best keep - n
                warn(
                    r,
                    "num_clients_to_keep=%d > %d results: keeping the best %d, as Flower's legacy "
                    "Krum does",
                    keep,
                    n,
                    min(keep - n, n),
                )
                keep = min(keep - n, n)
            chosen = order[:keep]
            if not usable_weights(chosen, w, [f"result {i}" for i in range(n)], r):
                return None, None
            sub, every = stack.take(chosen), range(len(chosen))  # row k is result chosen[k]
            return selected_mean(sub, every, [w[i] for i in chosen], self.backend), chosen

        return self._fit(server_round, results, failures, combine, select=True)


class Bulyan(LegacyEngineStrategy, legacy.Bulyan):
    """Flower's legacy Bulyan on the engine (see the module docstring)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.first_aggregation_rule is not aggregate_krum:
            raise InvalidArgument(
                "Bulyan's first stage is Krum here, as the only rule Flower's legacy Bulyan "
                f"accepts; got first_aggregation_rule={self.first_aggregation_rule!r}"
            )

    def aggregate_fit(self, server_round: int, results: Any, failures: Any) -> Any:
        """Iterated Krum selects ``n - 2f``; the ``n - 4f`` values closest to their median
        are averaged per coordinate; ``on_too_few`` below ``n >= 4f + 3``."""

        def combine(stack: Stack | Unstacked, w: list[float], r: int) -> Any:
            n = len(stack)
            f = resolve_f(
                "bulyan", n, int(self.num_malicious_clients), self.on_too_few, r, what="Bulyan"
            )
            if f is None:
                return None, None
            chosen = iterated_krum(stack.sq_dists(self.backend), f, n - 2 * f).tolist()
            sub, every = stack.take(chosen), range(len(chosen))  # row k is result chosen[k]
            return bulyan_coordinates(sub, every, n - 4 * f), chosen

        return self._fit(server_round, results, failures, combine, select=True)
