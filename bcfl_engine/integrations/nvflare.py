"""NVIDIA FLARE's HE aggregator, summing the clients' TenSEAL bytes on the engine.

:class:`HEInTimeAccumulateWeightedAggregator` has the name, constructor arguments and
behaviour of ``nvflare.app_opt.he.intime_accumulate_model_aggregator
.HEInTimeAccumulateWeightedAggregator`` (it subclasses it): the same accept checks and
rejections (wrong round, duplicate contributor, data kind, processing algorithm, return code),
the same DXO out (``PROCESSED_KEYS``, ``PROCESSED_ALGORITHM``), and for each encrypted layer
the ``CKKSVector`` NVFlare's returns, byte for byte: the contributions' ciphertexts summed,
times ``1 / W`` in TenSEAL (W the sum of the weights). Changing a job is its ``path`` in
``config_fed_server.json``, or ``aggregator=`` in ``FedAvgRecipeWithHE``; clients are unchanged.

What differs is the work. Each encrypted layer is read as the bytes it came in
(:mod:`~.nvflare_wire`) and decoded into the layer's running residue sum when it is
accepted, so the round closes with one TenSEAL load and one ``1 / W`` per layer. A
contribution that cannot join the sum is rejected with a logged reason (``accept`` returns
False, as NVFlare rejects a bad one) and changes nothing: a layer under another context than
the round's (other encryption parameters; the keys are not compared: TenSEAL draws new
relinearization keys each time a context is loaded, so two clients of one key send different
key bytes, and keys of the same parameters cannot be told apart from public material), a
ciphertext of another scale or level, a malformed one, or a layer encrypted in one
contribution and plaintext in another. Plaintext layers
and metrics take NVFlare's own arithmetic. With ``weigh_by_local_iter=True`` (ciphertexts
multiplied by float weights in TenSEAL) every layer takes NVFlare's path.

``exact_division=True`` (opt-in) divides by setting the sum's scale to ``scale * W`` instead of
multiplying by ``1 / W``: thousands of times more precise with HEBuilder's context, and one level
kept; not byte-identical to NVFlare, and a WEIGHT_DIFF job's model update (ciphertext + this
aggregate) then fails on the scale mismatch: use it with WEIGHTS.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

from ..errors import MissingDependency, PayloadError
from ..he.proto import context_parameters
from .nvflare_wire import LayerSum, WireCKKSVector, register, ts, wire_of

try:
    from nvflare.apis.dxo import DataKind
    from nvflare.apis.event_type import EventType
    from nvflare.apis.fl_context import FLContext
    from nvflare.apis.shareable import Shareable
    from nvflare.app_common.aggregators.weighted_aggregation_helper import (
        WeightedAggregationHelper,
    )
    from nvflare.app_opt.he import intime_accumulate_model_aggregator as _he
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise MissingDependency(
        f"the NVIDIA FLARE integration needs nvflare ({exc}); pip install 'bcfl_engine[nvflare]'"
    ) from None

__all__ = ["HEInTimeAccumulateWeightedAggregator"]


class WireAggregationHelper(WeightedAggregationHelper):
    """NVFlare's ``WeightedAggregationHelper`` with encrypted layers summed as residues.

    Parameters
    ----------
    exclude_vars : the compiled regex of the helper it replaces (or None)
    weigh_by_local_iter : as NVFlare's; True sends every layer through NVFlare's arithmetic
    exact_division : see the module's docstring
    """

    total: dict[str, Any]
    counts: dict[str, float]
    key_contribution_counts: dict[str, int]

    def __init__(self, exclude_vars: Any, weigh_by_local_iter: bool, exact_division: bool) -> None:
        super().__init__(exclude_vars=None, weigh_by_local_iter=weigh_by_local_iter)
        self.exclude_vars = exclude_vars
        self.exact_division = exact_division
        self.lock = threading.RLock()  # add() runs NVFlare's add() under it
        self.rebuilt = 0  # encrypted layers that arrived as TenSEAL objects, not wire bytes
        threads = torch.get_num_threads()
        self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

    def reset_stats(self) -> None:
        super().reset_stats()
        self.context: bytes | None = None

    def _encrypted(self, data: dict) -> dict:
        excluded = self.exclude_vars
        return {
            k: v
            for k, v in data.items()
            if isinstance(v, ts.CKKSVector) and not (excluded is not None and excluded.search(k))
        }

    def add(self, data: Any, weight: float, contributor_name: str, contribution_round: Any) -> None:
        """Decode every encrypted layer of ``data``, then add all of it: a layer that fails
        raises :class:`PayloadError` before anything is added."""
        if self.weigh_by_local_iter:
            super().add(data, weight, contributor_name, contribution_round)
            return
        encrypted = self._encrypted(data)
        with self.lock:
            context = self.context
            params = None if context is None else context_parameters(context)
            for k in data:
                if k not in encrypted and isinstance(self.total.get(k), LayerSum):
                    raise PayloadError(
                        f"layer {k!r} is in plaintext; this round holds it encrypted"
                    )
            staged: dict[str, LayerSum] = {}
            jobs: list[tuple[LayerSum, bytes]] = []
            try:
                for k, v in encrypted.items():
                    if not (isinstance(v, WireCKKSVector) and v.untouched):
                        self.rebuilt += 1
                    vector, ctx = wire_of(v)
                    if context is None:
                        context, params = ctx, context_parameters(ctx)
                    elif ctx is not context and context_parameters(ctx) != params:
                        raise PayloadError(
                            f"layer {k!r} is under another context than the round's "
                            "(other encryption parameters)"
                        )
                    layer = self.total.get(k)
                    if layer is None:
                        layer = LayerSum(context)
                    elif not isinstance(layer, LayerSum):
                        raise PayloadError(
                            f"layer {k!r} is encrypted; this round holds it in plaintext"
                        )
                    jobs.append((layer, vector))
                    staged[k] = layer
                self._stage(jobs, contributor_name)
            except PayloadError:
                for layer in staged.values():
                    layer.rollback()
                raise
            new = [k for k in data if k not in self.total]
            plain = {k: v for k, v in data.items() if k not in encrypted}
            super().add(plain, weight, contributor_name, contribution_round)
            for k, layer in staged.items():
                layer.keep()
                self.key_contribution_counts[k] = self.key_contribution_counts.get(k, 0) + 1
                self.counts[k] = self.counts[k] + weight if k in self.total else weight
                self.total[k] = layer
            self.context = context
            if staged and new:  # NVFlare's order: keys as first seen, each message's in order
                order = [k for k in self.total if k not in new] + [
                    k for k in new if k in self.total
                ]
                self.total = {k: self.total[k] for k in order}

    def _stage(self, jobs: list[tuple[LayerSum, bytes]], name: str) -> None:
        """Stage each layer's ciphertexts, layers side by side on the CPU's threads (the C++
        decoder releases the GIL; a layer under 4 MB decodes on one thread); the first
        PayloadError is raised once every layer is staged or refused."""
        if len(jobs) < 2 or self.pool is None:
            for layer, vector in jobs:
                layer.stage(vector, name)
            return
        futures = [self.pool.submit(layer.stage, vector, name) for layer, vector in jobs]
        errors = [f.exception() for f in futures]
        for exc in errors:
            if exc is not None:
                raise exc

    def get_result(self) -> dict:
        """NVFlare's result: each encrypted layer's sum times ``1 / W`` (or at scale ``scale *
        W`` under ``exact_division``), plaintext ones by NVFlare's own arithmetic."""
        with self.lock:
            stats = self.get_aggregation_stats()
            order = list(self.total)
            sums = {
                k: (v, self.counts[k]) for k, v in self.total.items() if isinstance(v, LayerSum)
            }
            for k in sums:
                del self.total[k]
            context = self.context
            plain = super().get_result()  # divides the rest, resets the round
            self.last_aggregation_stats = stats
        loaded = ts.context_from(context) if sums else None
        out = {}
        for k in order:
            if k in sums:
                layer, total_weight = sums[k]
                out[k] = layer.finish(loaded, total_weight, self.exact_division)
            else:
                out[k] = plain[k]
        return out


class HEInTimeAccumulateWeightedAggregator(_he.HEInTimeAccumulateWeightedAggregator):
    """NVFlare's ``HEInTimeAccumulateWeightedAggregator``, the sums on the engine.

    Parameters
    ----------
    exclude_vars, aggregation_weights, expected_data_kind, weigh_by_local_iter : NVFlare's
        (same defaults)
    exact_division : False (NVFlare's bytes) or True (divide by the scale; see the module)
    ledger, task, participants, store : optional chain commits
        (:mod:`bcfl_engine.integrations.nvflare_chain`): each site signs its encrypted layers
        (``SignContribution`` after ``HEModelEncryptor``); the round commits the bundled sum of
        the accepted contributions, which ``bcfl audit`` recomputes; the output is unchanged
    registry, key_env : with ``ledger`` a node's URL (a job's JSON config): the registry's
        address, and the environment variable that holds the aggregator's key
    """

    def __init__(
        self,
        exclude_vars: Any = None,
        aggregation_weights: Any = None,
        expected_data_kind: Any = DataKind.WEIGHT_DIFF,
        weigh_by_local_iter: bool = False,
        exact_division: bool = False,
        ledger: Any = None,
        task: int | None = None,
        participants: Any = None,
        store: Any = None,
        registry: str | None = None,
        key_env: str = "BCFL_CHAIN_KEY",
    ) -> None:
        register()  # before NVFlare's own, where this runs first in the process
        super().__init__(
            exclude_vars=exclude_vars,
            aggregation_weights=aggregation_weights,
            expected_data_kind=expected_data_kind,
            weigh_by_local_iter=weigh_by_local_iter,
        )
        self.exact_division = bool(exact_division)
        self._told_rebuilt = False
        # Kept under their own names: NVFlare's job exporter writes a component's arguments
        # from the attributes of the same name (a ledger given as a URL fits a job's JSON).
        self.ledger, self.task, self.participants, self.store = ledger, task, participants, store
        self.registry, self.key_env = registry, key_env
        self.chain = None
        if ledger is not None:
            from .nvflare_chain import ChainRound

            self.chain = ChainRound(
                ledger, task, participants or [], store, exclude_vars, registry, key_env
            )
        self._context: bytes | None = None  # the round's public context, from the wire

    def handle_event(self, event_type: str, fl_ctx: FLContext) -> None:
        super().handle_event(event_type, fl_ctx)
        if event_type == EventType.START_RUN:
            for dxo_aggregator in self.dxo_aggregators.values():
                old = dxo_aggregator.aggregation_helper
                dxo_aggregator.aggregation_helper = WireAggregationHelper(
                    old.exclude_vars, old.weigh_by_local_iter, self.exact_division
                )

    def accept(self, shareable: Shareable, fl_ctx: FLContext) -> bool:
        """NVFlare's accept; a contribution whose ciphertexts cannot join the round's sums is
        rejected with the reason in the log (with ``ledger=``, so is one without its site's
        valid signature)."""
        from .nvflare_chain import accept_reply

        accepted = accept_reply(
            self, shareable, fl_ctx,
            lambda: super(HEInTimeAccumulateWeightedAggregator, self).accept(shareable, fl_ctx),
            (PayloadError,), on_signed=self._keep_context,
        )  # fmt: skip
        if not self._told_rebuilt and any(
            getattr(a.aggregation_helper, "rebuilt", 0) for a in self.dxo_aggregators.values()
        ):
            self._told_rebuilt = True
            self.log_warning(
                fl_ctx,
                "encrypted layers arrive as TenSEAL objects rebuilt by NVFlare's decomposer "
                "(registered first in this process): they are summed from their re-serialized "
                "bytes, with no speed-up. Register bcfl_engine.integrations.nvflare_wire"
                ".CKKSWireDecomposer first (README: Use with NVIDIA FLARE).",
            )
        return accepted

    def _keep_context(self, dxo: Any) -> None:
        """The round's public context, from the first signed reply's wire bytes."""
        layers = [v for v in dxo.data.values() if isinstance(v, ts.CKKSVector)]
        if self._context is None and layers:
            self._context = wire_of(layers[0])[1]

    def aggregate(self, fl_ctx: FLContext) -> Shareable:
        """NVFlare's aggregate; with ``ledger=`` the accepted contributions' bundled sum is
        committed too (a failure is logged: the round's output goes out as NVFlare's would)."""
        out: Shareable = super().aggregate(fl_ctx)
        if self.chain is not None and self.chain.signed:
            names = list(self.chain.signed)
            opts = {"secure": "ckks", "he_context": self._context}
            _, why = self.chain.commit(names, self.chain.round, opts)
            if why is not None:
                self.log_error(fl_ctx, f"round {self.chain.round + 1} was not committed: {why}")
            self.chain.signed.clear()
            self._context = None
        return out
