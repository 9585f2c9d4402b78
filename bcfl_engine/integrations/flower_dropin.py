"""Flower's own strategy names, aggregating on the engine: swap the import line, nothing else.

``from bcfl_engine.integrations.flower import FedAvg, FedMedian, FedTrimmedAvg, Krum,
MultiKrum, Bulyan`` gives classes that subclass Flower's (``flwr.serverapp.strategy``), take
the same constructor arguments (``num_malicious_nodes``, ``beta``, ``num_nodes_to_select``,
``selection_rule``, and all of FedAvg's), and keep Flower's semantics:

- FedAvg: the mean weighted by example counts; FedMedian: the coordinate-wise median;
  FedTrimmedAvg: ``int(beta * n)`` values dropped at each end per coordinate;
- MultiKrum / Krum: the ``num_nodes_to_select`` (Krum: 1) best Krum scores, each summing
  ``max(1, n - f - 2)`` nearest squared distances, averaged weighted by example counts;
  the train metrics are those of the selected replies;
- Bulyan: Multi-Krum selects ``theta = n - 2f``, then per coordinate the mean of the
  ``theta - 2f`` values closest to the median; metrics of the selected replies.

What differs is what a drop-in must do better: arrays keep their shape and dtype (a 0-d
integer buffer stays a 0-d integer; float64 stays float64, aggregated in float64 with
Flower's arithmetic), a reply with NaN or an infinity is left out with a warning, and where
Flower returns no model (Bulyan below ``n >= 4f + 3``) the ``on_too_few`` policy applies
(:class:`~.flower_policy.OnTooFew`). Where Flower returns a model although the paper's
precondition fails (Krum with 3 replies and ``num_malicious_nodes=1``), so do these, with a
warning that names the guarantee lost. Two keyword-only arguments are added: ``backend``
(the engine's, None for automatic) and ``on_too_few``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from logging import INFO
from typing import Any

import numpy as np

from .. import rules
from ..errors import MissingDependency
from .flower_arrays import (
    bulyan_coordinates,
    coordinatewise,
    flower_krum_order,
    selected_mean,
    weighted_mean,
)
from .flower_npy import StackPool
from .flower_policy import OnTooFew, as_policy, resolve_f, usable_weights, warn
from .flower_replies import (
    Replies,
    check_consistency,
    distances_from_views,
    read_replies,
    stack_replies,
    to_record,
    train_metrics,
)
from .flower_stream import streamed_mean

try:
    from flwr.app import ArrayRecord, Message, MetricRecord, RecordDict
    from flwr.common.logger import log
    from flwr.serverapp import strategy as flwr_strategy
    from flwr.serverapp.strategy.multikrum import select_multikrum
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None

Outcome = tuple[list[np.ndarray] | None, list[int] | None]


class EngineStrategy:
    """What the engine's Message API strategies share: reading and screening the replies,
    building the result record, and the train metrics of the replies that went in."""

    backend: str | None
    on_too_few: OnTooFew

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

    def summary(self) -> None:
        """Flower's summary, then the engine's settings."""
        super().summary()  # type: ignore[misc]
        log(
            INFO,
            "\t└──> aggregated by bcfl_engine: backend=%s on_too_few=%s",
            self.backend or "auto",
            self.on_too_few.value,
        )

    def _check_and_log_replies(
        self, replies: Iterable[Message], is_train: bool, validate: bool = True
    ) -> tuple[list[Message], list[Message]]:
        """Flower's: replies split into valid and failed, logged, and the valid ones checked
        for consistency, which here walks each reply's records once
        (:func:`~.flower_replies.check_consistency`)."""
        valid, failed = super()._check_and_log_replies(  # type: ignore[misc]
            replies, is_train, validate=False
        )
        if validate and valid:
            key = self.weighted_by_key  # type: ignore[attr-defined]
            check_consistency([m.content for m in valid], key, is_train)
        return valid, failed

    def _train(
        self,
        server_round: int,
        replies: Iterable[Message],
        combine: Callable[[Replies, int], Outcome],
        validate: bool = True,
        stream: bool = False,
        select: bool = False,
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Flower's checks, the replies read and screened, ``combine``d, as Flower's result.
        ``stream``: the rule is the weighted mean, computed without stacking the replies
        where it can (:func:`~.flower_stream.streamed_mean`). ``select``: ``combine`` reads
        only :meth:`Replies.sq_dists` and :meth:`Replies.chosen` (a selection rule), so the
        distances come off the views where they can (:func:`~.flower_replies.distances_from_views`)."""
        valid, _ = self._check_and_log_replies(replies, is_train=True, validate=validate)
        if not valid:
            return None, None
        got = read_replies(
            valid,
            self.weighted_by_key,  # type: ignore[attr-defined]
            server_round,
            self.stack_pool,
            stack=not (stream or select),
        )
        if got is not None and stream:
            streamed = streamed_mean(got.arrays, got.weights, self.backend)  # None: a weight is 0
            if streamed is not None:
                self._streamed(streamed)
                return to_record(got.keys, streamed), self._metrics(got.contents)
            got = stack_replies(got, server_round, self.stack_pool)
        elif got is not None and select:
            got = distances_from_views(got, server_round, self.stack_pool, self.backend)
        if got is None:
            warn(server_round, "every reply was left out: no aggregate this round")
            return None, None
        out, chosen = combine(got, server_round)
        if out is None:
            return None, None
        contents = got.contents if chosen is None else [got.contents[i] for i in chosen]
        return to_record(got.keys, out), self._metrics(contents)

    def _metrics(self, contents: list[RecordDict]) -> MetricRecord | None:
        return train_metrics(
            self.train_metrics_aggr_fn,  # type: ignore[attr-defined]
            contents,
            self.weighted_by_key,  # type: ignore[attr-defined]
        )

    def _streamed(self, out: list[np.ndarray]) -> None:
        """Called with a weighted mean computed by :func:`~.flower_stream.streamed_mean`."""


def _fedavg(self: EngineStrategy, got: Replies, server_round: int) -> Outcome:
    if not usable_weights(range(len(got)), got.weights, got.names, server_round):
        return None, None
    return weighted_mean(got.stack, got.weights, self.backend), None


def _krum_selection(self: Any, got: Replies, server_round: int, m: int) -> Outcome:
    n, f = len(got), int(self.num_malicious_nodes)
    pre = rules.get("krum").precondition
    if pre is not None and not pre.holds(n, f):
        warn(
            server_round,
            "%s with %d replies and num_malicious_nodes=%d: Krum's guarantee (%s) does not "
            "hold, so %d faulty replies may decide the selection; selecting as Flower does",
            type(self).__name__,
            n,
            f,
            pre.text,
            f,
        )
    chosen = flower_krum_order(got.sq_dists(self.backend), f)[:m]
    if not usable_weights(chosen, got.weights, got.names, server_round):
        return None, None
    sub = got.chosen(chosen, self.stack_pool)  # row k of sub is reply chosen[k]
    every = range(len(chosen))
    return selected_mean(sub, every, [got.weights[i] for i in chosen], self.backend), chosen


class FedAvg(EngineStrategy, flwr_strategy.FedAvg):
    """Flower's FedAvg on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The weighted mean of the replies' arrays, by example counts."""
        return self._train(server_round, replies, lambda g, r: _fedavg(self, g, r), stream=True)


class FedMedian(EngineStrategy, flwr_strategy.FedMedian):
    """Flower's FedMedian on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The coordinate-wise median of the replies' arrays."""

        def combine(got: Replies, _: int) -> Outcome:
            return coordinatewise(got.stack, "median", 0, self.backend), None

        return self._train(server_round, replies, combine)


class FedTrimmedAvg(EngineStrategy, flwr_strategy.FedTrimmedAvg):
    """Flower's FedTrimmedAvg on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Per coordinate, the mean after dropping ``int(beta * n)`` values at each end."""

        def combine(got: Replies, _: int) -> Outcome:
            cut = int(self.beta * len(got))
            return coordinatewise(got.stack, "trimmed_mean", cut, self.backend), None

        return self._train(server_round, replies, combine)


class MultiKrum(EngineStrategy, flwr_strategy.MultiKrum):
    """Flower's MultiKrum on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The weighted mean of the ``num_nodes_to_select`` best-scored replies."""

        def combine(got: Replies, r: int) -> Outcome:
            return _krum_selection(self, got, r, int(self.num_nodes_to_select))

        return self._train(server_round, replies, combine, select=True)


class Krum(EngineStrategy, flwr_strategy.Krum):
    """Flower's Krum on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The best-scored reply's arrays."""

        def combine(got: Replies, r: int) -> Outcome:
            return _krum_selection(self, got, r, 1)

        return self._train(server_round, replies, combine, select=True)


class Bulyan(EngineStrategy, flwr_strategy.Bulyan):
    """Flower's Bulyan on the engine (see the module docstring)."""

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Multi-Krum selection of ``n - 2f``, then the mean of the ``n - 4f`` values closest
        to the median per coordinate; ``on_too_few`` below ``n >= 4f + 3``."""
        return self._train(server_round, replies, self._combine, select=True)

    def _combine(self, got: Replies, server_round: int) -> Outcome:
        n = len(got)
        f = resolve_f(
            "bulyan", n, int(self.num_malicious_nodes), self.on_too_few, server_round, what="Bulyan"
        )
        if f is None:
            return None, None
        theta = n - 2 * f
        if self.selection_rule is select_multikrum:
            chosen = flower_krum_order(got.sq_dists(self.backend), f)[:theta]
        else:  # the user's own selection rule, on Flower's RecordDicts
            picked = self.selection_rule(got.contents, f, theta)
            where = {id(c): i for i, c in enumerate(got.contents)}
            chosen = [where[id(c)] for c in picked]
        sub = got.chosen(chosen, self.stack_pool)
        return bulyan_coordinates(sub, range(len(chosen)), theta - 2 * f), chosen


__all__ = [
    "Bulyan",
    "EngineStrategy",
    "FedAvg",
    "FedMedian",
    "FedTrimmedAvg",
    "Krum",
    "MultiKrum",
    "OnTooFew",
    "Replies",
    "read_replies",
    "stack_replies",
    "to_record",
]
