"""Differential privacy in the round pipeline: the budget a task has spent, read back from what
the chain committed; the check that refuses a round past its budget before any noise is drawn;
the private aggregate; and what an audit can check of it.

A private round (``AggregationRound(..., dp=GaussianDP(...))``; under a multiparty key the
parties add the noise as they decrypt, :mod:`bcfl_engine.dp_shares`) commits, in its metadata (whose
hash is on chain), ``meta["dp"]``: the mechanism's parameters (:meth:`GaussianDP.as_meta`), the
sample rate ``q = num_sampled_clients / registered participants`` (each client in a round with
probability ``q``: the accountant's Poisson sampling assumption; 1 when everyone takes part in
every round), and the epsilon the task has spent after this round with the accountant that gave
it. The spent epsilon is that of every private round of the task up to this one, composed
(:func:`bcfl_engine.dp.account`), each round's parameters read from its committed metadata: an
auditor recomputes it from the chain and the store's metadata bytes alone (each checked against
the hash on chain), and so does a restarted aggregator.

What an audit can check of the noise: the noiseless part (the clipped mean of the committed
payloads) is recomputed bit for bit; the committed result minus it is the noise, whose mean and
standard deviation are tested against the declared ``sigma`` (6 standard errors). That shows
noise of the declared scale is in the result; it cannot show that the noise was secret or
independent of the data (an aggregator that keeps its noise can subtract it). With
``noise_multiplier = 0`` the result must equal the clipped mean bit for bit.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import torch

from . import protocol
from .dp import (
    GaussianDP,
    PreparedNoise,
    account,
    check_rule,
    clipped_mean,
    prepare_noise,
    private_mean,
)
from .errors import BudgetExceeded, InvalidArgument, PayloadError


class PrivateRound:
    """The round's side of differential privacy; :class:`~bcfl_engine.round.AggregationRound`
    calls :meth:`_init_dp` when it is made and :meth:`_with_dp` on the metadata it commits."""

    dp: GaussianDP | None
    ledger: Any
    store: Any
    key: str
    task: int
    round: int
    secure: Any
    dim: int | None

    def _init_dp(
        self,
        dp: GaussianDP | None,
        rule: str,
        pre: Sequence[Any],
        params: Any,
        secure: Any,
        participants: int,
        keys: Any = None,
    ) -> None:
        self.dp = dp
        if dp is None:
            return
        if not isinstance(dp, GaussianDP):
            raise InvalidArgument(f"dp must be a GaussianDP; got {type(dp).__name__}")
        if secure is not None and keys is None:
            raise InvalidArgument(
                "dp= on a CKKS round: the aggregator never sees the sum to add noise to; "
                "under a multiparty key (keys=) the parties add it (bcfl_engine.dp_shares)"
            )
        check_rule(rule, pre, params)
        if dp.num_sampled_clients > participants:
            raise InvalidArgument(
                f"dp: num_sampled_clients={dp.num_sampled_clients} is more than the task's "
                f"{participants} participants"
            )
        self._dp_rate = dp.num_sampled_clients / participants

    def _prepare_noise(self) -> None:
        """Draw this round's noise now, while it waits for its clients, so that the aggregate
        adds it in one read (:class:`~bcfl_engine.dp.PreparedNoise`): a plaintext private round
        with noise, within its budget (past it nothing is drawn, and finalize refuses it)."""
        self._noise: PreparedNoise | None = None
        if self.dp is None or self.dp.noise_std == 0 or self.secure is not None or not self.dim:
            return
        try:
            self._spend()
        except (BudgetExceeded, PayloadError):
            return  # finalize raises it
        self._noise = prepare_noise(self.dim)

    def _fresh_noise(self) -> PreparedNoise | None:
        """The prepared noise if no aggregate used it yet (a retried finalize draws anew)."""
        noise = getattr(self, "_noise", None)
        return noise if noise is not None and not noise.used else None

    def _spend(self) -> Any:
        """The task's spent epsilon after this round (:class:`~bcfl_engine.dp.Accounting`), None
        without DP; BudgetExceeded (nothing drawn, nothing written) when it is over the budget.
        The accountant's result is cached: finalize asks before it starts its clock, and the
        metadata gets the same numbers."""
        if self.dp is None:
            return None
        earlier = spent_rounds(self.ledger, self.store, self.key, self.task, self.round)
        events = [(e["noise_multiplier"], e["sample_rate"]) for _, e in earlier]
        acc = account([*events, (self.dp.noise_multiplier, self._dp_rate)], self.dp.delta)
        if self.dp.budget is not None and acc.epsilon > self.dp.budget:
            before = account(events, self.dp.delta).epsilon
            raise BudgetExceeded(
                f"task {self.task} round {self.round}: epsilon would reach {acc.epsilon:.4g} "
                f"at delta {self.dp.delta:g} (spent {before:.4g} over {len(events)} private "
                f"round(s)), over the budget {self.dp.budget:g}; the round is not aggregated"
            )
        return acc

    def _with_dp(self, meta: dict[str, Any]) -> dict[str, Any]:
        """``meta`` with the round's DP parameters and the task's spent epsilon after it
        (:meth:`_spend`, which raises BudgetExceeded past the budget)."""
        acc = self._spend()
        if acc is None:
            return meta
        assert self.dp is not None
        return {**meta, "dp": dp_meta(self.dp, self._dp_rate, acc.epsilon, acc.method)}


def dp_meta(dp: GaussianDP, sample_rate: float, epsilon: float, method: str) -> dict[str, Any]:
    """The ``dp`` object of a round's metadata."""
    eps = epsilon if math.isfinite(epsilon) else None  # JSON has no infinity
    return {**dp.as_meta(), "sample_rate": sample_rate, "epsilon": eps, "accountant": method}


def read_dp(meta: dict[str, Any]) -> tuple[GaussianDP, float] | None:
    """``(parameters, sample rate)`` of a round's ``meta["dp"]``, None for a round without DP;
    PayloadError when malformed."""
    obj = meta.get("dp")
    if obj is None:
        return None
    dp = GaussianDP.from_meta(obj)
    q = obj.get("sample_rate")
    if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0 < q <= 1:
        raise PayloadError(f"round metadata: dp sample_rate must be in (0, 1]; got {q!r:.80}")
    return dp, float(q)


def spent_rounds(
    ledger: Any, store: Any, key: str, task: int, before: int
) -> list[tuple[int, dict[str, Any]]]:
    """``[(round, meta["dp"])]`` of the private rounds of ``task`` committed on chain before
    round ``before``, each from the metadata whose hash the chain holds. PayloadError when a
    committed round's metadata is missing from the store, altered or malformed: its budget
    cannot be known."""
    out = []
    for r in range(1, before):
        commit = ledger.record(task, r)
        if commit is None:
            continue
        try:
            raw = store.get(commit.meta_hash, hasher=protocol.meta_hash)
            meta = protocol.check_meta(json.loads(raw))
            if read_dp(meta) is not None:
                out.append((r, meta["dp"]))
        except (PayloadError, ValueError) as exc:
            raise PayloadError(
                f"task {task} round {r}: committed metadata 0x{commit.meta_hash.hex()} "
                f"cannot be read, so the privacy budget spent is unknown: {exc}"
            ) from None
    return out


def private_aggregate(
    meta: dict[str, Any],
    x: torch.Tensor,
    norms: torch.Tensor | None = None,
    noise: PreparedNoise | None = None,
) -> torch.Tensor:
    """The private mean of a round described by ``meta``: fresh noise from the OS, or
    ``noise``, drawn beforehand; ``norms``: the rows' norms taken at intake
    (:attr:`~bcfl_engine.updates.UpdateBatch.norms`)."""
    found = read_dp(meta)
    assert found is not None
    return private_mean(x, found[0], backend=meta["backend"], check=False, norms=norms, noise=noise)


def audit_privacy(
    ledger: Any,
    store: Any,
    key: str,
    task: int,
    round: int,
    meta: dict[str, Any],
    problems: list[str],
) -> str:
    """Recompute the task's spent epsilon after each private round up to ``round`` from the
    committed metadata; a claim that differs, or a budget passed, is a finding. Returns the
    line the audit reports."""
    try:
        rounds = [*spent_rounds(ledger, store, key, task, round), (round, meta["dp"])]
    except PayloadError as exc:
        problems.append(str(exc))
        return "privacy budget not recomputed"
    dp, _ = read_dp(meta) or (None, 0.0)
    assert dp is not None
    parts, events = [], []
    for r, obj in rounds:
        events.append((obj["noise_multiplier"], obj["sample_rate"]))
        acc = account(events, dp.delta)
        shown = f"{acc.epsilon:.4g}" if math.isfinite(acc.epsilon) else "inf"
        parts.append(f"round {r}: {shown}")
        claimed = obj.get("epsilon")
        claimed = math.inf if claimed is None else claimed
        if isinstance(claimed, bool) or not isinstance(claimed, (int, float)):
            claimed = math.nan  # not a number: differs from any epsilon
        if r == round and not _same(claimed, acc.epsilon):
            problems.append(
                f"round {r} claims epsilon {claimed!r} spent; the committed parameters of "
                f"rounds 1..{r} give {acc.epsilon!r} ({acc.method})"
            )
        if dp.budget is not None and acc.epsilon > dp.budget and r == round:
            problems.append(
                f"round {r} spends epsilon {acc.epsilon:.4g}, over its budget {dp.budget:g}"
            )
    budget = "none" if dp.budget is None else f"{dp.budget:g}"
    return (
        f"privacy recomputed from the chain (epsilon spent at delta {dp.delta:g}, budget "
        f"{budget}, {acc.method}): " + ", ".join(parts)
    )


def _same(a: float, b: float) -> bool:
    return a == b or (math.isfinite(a) and math.isfinite(b) and abs(a - b) <= 1e-9 * abs(b))


def audit_noise(
    meta: dict[str, Any], x: torch.Tensor, released: torch.Tensor, problems: list[str]
) -> str:
    """Check the committed result ``released`` against the clipped mean of ``x`` recomputed
    here: equal when no noise was declared, else the difference has the declared scale."""
    found = read_dp(meta)
    assert found is not None
    dp = found[0]
    clean = clipped_mean(x, dp.clipping_norm, dp.num_sampled_clients, backend=meta["backend"])
    sigma = dp.noise_std
    if sigma == 0.0:
        if not torch.equal(clean, released):
            problems.append(
                "the result is not the clipped mean of the payloads (no noise declared)"
            )
        return "result recomputed (clipped mean, no noise)"
    noise = released.double() - clean.double()
    d = noise.numel()
    if d < 2:
        return "result: one coordinate, the noise cannot be tested"
    mean, std = float(noise.mean()), float(noise.std())
    # 6 standard errors of the sample mean and of the sample std (sigma / sqrt(2 (d - 1))),
    # plus 1e-3 for the float32 rounding of the released values.
    if (
        abs(mean) > 6 * sigma / math.sqrt(d)
        or abs(std / sigma - 1) > 6 / math.sqrt(2 * (d - 1)) + 1e-3
    ):
        problems.append(
            f"the result minus the recomputed clipped mean has mean {mean:.4g} and standard "
            f"deviation {std:.4g} over {d} coordinates; the declared noise has 0 and {sigma:.4g}"
        )
    return f"noise checked: std {std:.4g} of declared {sigma:.4g} over {d} coordinates"


def audit_private(
    ledger: Any,
    store: Any,
    key: str,
    task: int,
    round: int,
    meta: dict[str, Any],
    rows: Sequence[bytes | None],
    committed: bytes,
    problems: list[str],
) -> list[str]:
    """What :func:`~bcfl_engine.audit.audit` checks of a private round in place of the bit-for-
    bit recomputation: the noise (:func:`audit_noise`) and the budget (:func:`audit_privacy`);
    the lines it reports."""
    from .protocol import decode_update

    try:
        read_dp(meta)
    except PayloadError as exc:  # committed so: a finding
        problems.append(str(exc))
        return ["privacy not checked"]
    lines = [audit_privacy(ledger, store, key, task, round, meta, problems)]
    try:
        x = torch.stack([decode_update(bytes(d or b""), meta["dim"]) for d in rows])
        released = decode_update(store.get(committed, verify=False), meta["dim"])
        lines.append(audit_noise(meta, x, released, problems))
    except Exception as exc:  # untrusted payloads and metadata: a finding, not a crash
        problems.append(
            f"the private result cannot be checked from the stored payloads and metadata: "
            f"{type(exc).__name__}: {exc}"
        )
    return lines
