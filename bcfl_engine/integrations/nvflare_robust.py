"""Byzantine-robust aggregation for NVIDIA FLARE's plaintext jobs (NVFlare has none).

:class:`RobustAggregator` is a drop-in for ``nvflare.app_common.aggregators
.InTimeAccumulateWeightedAggregator`` (it subclasses it, and takes its constructor arguments
``exclude_vars``, ``aggregation_weights``, ``expected_data_kind``, ``weigh_by_local_iter``):
the same accept checks and rejections (wrong round, duplicate contributor, data kind, return
code) and the same DXO out, whose arrays are the engine's rule (:mod:`bcfl_engine.rules`) over
the accepted contributions instead of their weighted mean. Each contribution's arrays are
flattened into one float32 row when it is accepted (the rules compute in float32); the result
has every array's shape and dtype. Weighted rules (``mean``, ``geometric_median``) take
NVFlare's weight (aggregation weight x local steps) under ``weigh_by_local_iter``, equal
weights otherwise; the others ignore weights.

A contribution the rule cannot take is rejected with a logged reason and changes nothing:
NaN or an infinity (one poisons a mean), or arrays of other names or shapes than the round's
first. Values that are not arrays (metrics) take NVFlare's own weighted mean. When fewer
contributions arrived than the rule needs for ``f`` (its paper's precondition), the round
still closes, as NVFlare's would: with the largest ``f`` they allow, and a warning naming the
guarantee lost (with none, the weighted mean).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import torch

from .. import rules
from ..aggregate import aggregate
from ..errors import (
    InvalidArgument,
    MissingDependency,
    NonFiniteUpdate,
    PayloadError,
)
from ..updates import ParamSpec, all_finite

try:
    from nvflare.apis.dxo import DataKind
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.aggregators.intime_accumulate_model_aggregator import (
        InTimeAccumulateWeightedAggregator,
    )
    from nvflare.app_common.aggregators.weighted_aggregation_helper import (
        AggregationStatsKey,
        WeightedAggregationHelper,
    )
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the NVIDIA FLARE integration needs nvflare ({exc}); pip install 'bcfl_engine[nvflare]'"
    ) from None

__all__ = ["RobustAggregator"]


def _is_array(v: Any) -> bool:
    return isinstance(v, (np.ndarray, torch.Tensor))


class RobustAggregationHelper(WeightedAggregationHelper):
    """NVFlare's ``WeightedAggregationHelper`` with the arrays aggregated by a rule.

    Parameters
    ----------
    exclude_vars : the compiled regex of the helper it replaces (or None)
    weigh_by_local_iter : as NVFlare's (weighted rules take the weights only then)
    rule, f, backend, params : the engine's rule, its ``f``, backend and extra parameters
    """

    total: dict[str, Any]

    def __init__(
        self,
        exclude_vars: Any,
        weigh_by_local_iter: bool,
        rule: str,
        f: int,
        backend: Any,
        params: dict | None = None,
        chain: Any = None,
    ) -> None:
        super().__init__(exclude_vars=None, weigh_by_local_iter=weigh_by_local_iter)
        self.chain = chain  # commit(names, rule, f) -> (vector in name order | None, why)
        self.exclude_vars = exclude_vars
        self.lock = threading.RLock()  # add() runs NVFlare's add() under it
        self.rule, self.f, self.backend = rule, f, backend
        self.params = dict(params or {})
        self.warnings: list[str] = []  # said by the aggregator in its log

    def reset_stats(self) -> None:
        super().reset_stats()
        self.keys: list[str] = []
        self.spec: ParamSpec | None = None
        self.rows: list[torch.Tensor] = []
        self.weights: list[float] = []
        self.tensors: dict[str, bool] = {}  # which arrays came as torch tensors
        self.names: list[str] = []  # the contributors of the rows, in order

    def _arrays(self, data: dict) -> dict[str, Any]:
        excluded = self.exclude_vars
        return {
            k: v
            for k, v in data.items()
            if _is_array(v) and not (excluded is not None and excluded.search(k))
        }

    def add(self, data: Any, weight: float, contributor_name: str, contribution_round: Any) -> None:
        """Flatten the contribution's arrays into a row (:class:`PayloadError` before anything
        is kept if the rule cannot take it), the rest by NVFlare's arithmetic."""
        arrays = self._arrays(data)
        with self.lock:
            keys, spec = self.keys, self.spec
            if arrays and spec is None:
                keys = list(arrays)
                spec = ParamSpec.infer([arrays[k] for k in keys])
            row = None
            if arrays:
                assert spec is not None
                if set(arrays) != set(keys):
                    raise PayloadError(f"arrays {sorted(arrays)}; this round's are {sorted(keys)}")
                for k, entry in zip(keys, spec.entries, strict=True):
                    if tuple(arrays[k].shape) != entry.shape:
                        raise PayloadError(
                            f"array {k!r} has shape {tuple(arrays[k].shape)}; this round's is "
                            f"{entry.shape}"
                        )
                row = spec.flatten([arrays[k] for k in keys])
                if not all_finite(row):
                    raise PayloadError("NaN or infinity in its arrays")
            elif keys:
                raise PayloadError(f"no arrays; this round's are {sorted(keys)}")
            rest = {k: v for k, v in data.items() if k not in arrays}
            super().add(rest, weight, contributor_name, contribution_round)
            if row is not None:
                if not self.keys:
                    self.tensors = {k: isinstance(v, torch.Tensor) for k, v in arrays.items()}
                self.keys, self.spec = keys, spec
                self.rows.append(row)
                self.names.append(contributor_name)
                self.weights.append(float(weight))
                for k in keys:
                    self.key_contribution_counts[k] = self.key_contribution_counts.get(k, 0) + 1

    def get_aggregation_stats(self) -> dict:
        with self.lock:
            stats: dict = super().get_aggregation_stats()  # counts keys in total; add the rows'
            stats[AggregationStatsKey.KEYS_AGGREGATED] += len(self.keys)
            stats[AggregationStatsKey.KEYS_SEEN] += len(self.keys)
            stats[AggregationStatsKey.PARTIALLY_MATCHED_KEYS] = (
                stats[AggregationStatsKey.KEYS_AGGREGATED]
                - stats[AggregationStatsKey.FULLY_MATCHED_KEYS]
            )
            return stats

    def _effective(self, n: int) -> tuple[str, int]:
        """The rule and ``f`` the round runs with: ``f`` lowered to what ``n`` allows (or the
        weighted mean when none), with a warning naming the guarantee lost."""
        info = rules.get(self.rule)
        f = self.f
        if info.takes_f and info.precondition is not None and not info.precondition.holds(n, f):
            allowed = info.precondition.max_f(n)
            lost = f"{self.rule} requires {info.precondition.text}; got n={n}, f={f}"
            if allowed < 0:
                self.warnings.append(f"{lost}: the round's weighted mean instead")
                return "mean", 0
            self.warnings.append(f"{lost}: aggregated with f={allowed}")
            f = allowed
        return self.rule, f

    def _rule(
        self, x: torch.Tensor, w: torch.Tensor, names: list[str], keys: list[str], spec: ParamSpec
    ) -> torch.Tensor:
        rule, f = self._effective(x.shape[0])
        info = rules.get(rule)
        params = dict(self.params) if rule == self.rule else {}
        if self.chain is not None:
            opts = {"rule": rule, "f": f, "params": params, "backend": self.backend}
            out, why = self.chain(names, opts)
            if out is not None:
                return _from_name_order(torch.as_tensor(out), keys, spec)
            self.warnings.append(f"the round was not committed ({why}): aggregated here")
        weights = w if info.weighted and (self.weigh_by_local_iter or rule != self.rule) else None
        kw = dict(params, **({"f": f} if info.takes_f else {}))
        return aggregate(x, rule, weights=weights, backend=self.backend, **kw)

    def get_result(self) -> dict:
        """NVFlare's result for the rest; the arrays as the rule's output, shapes and dtypes
        kept (torch tensors stay tensors)."""
        with self.lock:
            stats = self.get_aggregation_stats()
            keys, spec, rows, w = self.keys, self.spec, self.rows, torch.tensor(self.weights)
            kinds, names = self.tensors, self.names
            plain = super().get_result()  # divides the rest, resets the round
            self.last_aggregation_stats = stats
        out = dict(plain)
        if rows:
            assert spec is not None
            agg = self._rule(torch.stack(rows), w, names, keys, spec)
            for k, a in zip(keys, spec.unflatten(agg), strict=True):
                out[k] = torch.from_numpy(a) if kinds[k] else a
        return out


def _from_name_order(flat: torch.Tensor, keys: list[str], spec: ParamSpec) -> torch.Tensor:
    """A vector of the arrays in name order (the signed layout) in the round's order ``keys``."""
    sizes = {k: e.numel for k, e in zip(keys, spec.entries, strict=True)}
    start, at = 0, {}
    for k in sorted(keys):
        at[k] = start
        start += sizes[k]
    return torch.cat([flat[at[k] : at[k] + sizes[k]] for k in keys])


class RobustAggregator(InTimeAccumulateWeightedAggregator):
    """NVFlare's ``InTimeAccumulateWeightedAggregator`` with a Byzantine-robust rule.

    Parameters
    ----------
    rule : a rule of :data:`bcfl_engine.rules.RULES` of kind "aggregate" (``median``,
        ``trimmed_mean``, ``krum``, ``multi_krum``, ``bulyan``, ``geometric_median``,
        ``centered_clipping``, ``mean``)
    f : the number of Byzantine contributions to tolerate (the rule states its precondition)
    exclude_vars, aggregation_weights, expected_data_kind, weigh_by_local_iter : NVFlare's
    backend : the engine's backend (None: automatic)
    params : the rule's extra parameters (``{"m": 3}`` for multi_krum, ``tau`` for
        centered_clipping, ...), as a dict so that a job's JSON config can hold them
    ledger, task, participants, store : optional chain commits
        (:mod:`bcfl_engine.integrations.nvflare_chain`): a :class:`~bcfl_engine.chain.Ledger`
        whose sender is the task's aggregator, the registry task id, its participants' addresses
        in registration order, and the payload store's folder. Each contribution must then be
        signed by its site (``SignContribution``); the round's weights are the signed step
        counts, so ``aggregation_weights`` must be left out and ``weigh_by_local_iter`` on.
    registry, key_env : with ``ledger`` a node's URL (a job's JSON config): the registry's
        address, and the environment variable that holds the aggregator's key
    """

    def __init__(
        self,
        rule: str = "median",
        f: int = 0,
        exclude_vars: Any = None,
        aggregation_weights: Any = None,
        expected_data_kind: Any = DataKind.WEIGHT_DIFF,
        weigh_by_local_iter: bool = True,
        backend: str | None = None,
        params: dict | None = None,
        ledger: Any = None,
        task: int | None = None,
        participants: Any = None,
        store: Any = None,
        registry: str | None = None,
        key_env: str = "BCFL_CHAIN_KEY",
    ) -> None:
        info = rules.get(rule)
        if info.kind != "aggregate":
            raise InvalidArgument(f"{rule!r} is a pre-aggregation step, not a rule")
        info.check_precondition(info.min_clients(f) if info.takes_f else 1, f)
        super().__init__(
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            expected_data_kind=expected_data_kind,
            weigh_by_local_iter=weigh_by_local_iter,
        )
        self.rule, self.f, self.backend, self.params = rule, f, backend, params
        # Kept under their own names: NVFlare's job exporter writes a component's arguments
        # from the attributes of the same name (a ledger given as a URL fits a job's JSON).
        self.ledger, self.task, self.participants, self.store = ledger, task, participants, store
        self.registry, self.key_env = registry, key_env
        self.chain = None
        if ledger is not None:
            from .nvflare_chain import ChainRound

            if aggregation_weights or not weigh_by_local_iter:
                raise InvalidArgument(
                    "with ledger= a contribution weighs its signed step count: leave "
                    "aggregation_weights out and weigh_by_local_iter on"
                )
            self.chain = ChainRound(
                ledger, task, participants or [], store, exclude_vars, registry, key_env
            )

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            for dxo_aggregator in self.dxo_aggregators.values():
                old = dxo_aggregator.aggregation_helper
                dxo_aggregator.aggregation_helper = RobustAggregationHelper(
                    old.exclude_vars,
                    old.weigh_by_local_iter,
                    self.rule,
                    self.f,
                    self.backend,
                    self.params,
                    chain=None if self.chain is None else self._commit,
                )

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """NVFlare's accept; a contribution the rule cannot take (or, with ``ledger=``, one
        without its site's valid signature) is rejected with the reason in the log."""
        from .nvflare_chain import accept_reply

        return accept_reply(
            self, shareable, fl_ctx, lambda: super(RobustAggregator, self).accept(shareable, fl_ctx),
            (PayloadError, NonFiniteUpdate),
        )  # fmt: skip

    def _commit(self, names: list[str], options: dict[str, Any]) -> tuple[Any, str | None]:
        assert self.chain is not None
        return self.chain.commit(names, self.chain.round, options)

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        out: Shareable = super().aggregate(fl_ctx)
        for dxo_aggregator in self.dxo_aggregators.values():
            helper = dxo_aggregator.aggregation_helper
            for message in getattr(helper, "warnings", []):
                self.log_warning(fl_ctx, message)
            if hasattr(helper, "warnings"):
                helper.warnings.clear()
        if self.chain is not None:
            self.chain.signed.clear()
        return out
