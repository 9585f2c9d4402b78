"""Differential privacy of a secure round under a multiparty key: distributed noise.

A round ``AggregationRound(secure="ckks", keys=epoch, rule="mean", dp=GaussianDP(C, z, m))``
releases the decrypted *sum* of the clients' updates plus ``N(0, (z C)^2)`` per value, added by
the parties as they decrypt, not by the aggregator, which never sees the sum:

1. each client clips its own update before it encrypts (:func:`bcfl_engine.dp.clip_update`);
   nobody can check that under encryption (see there: the bucketed robust round is the answer
   where an unclipped update matters);
2. every payload has weight 1 (the unweighted sum has sensitivity ``C``; a weight ``w`` would
   make it ``w C``), which each party checks (:func:`check_request`) along with the rest of the
   request (:func:`bcfl_engine.decryption.party_share`);
3. each of the ``t`` active parties adds ``N(0, (z C)^2 / t)`` per value to its decryption share
   (:mod:`bcfl_engine.he.mpnoise`: the coefficient-domain variance that gives it, the
   determinism of the draw, and what ``t - 1`` colluding parties learn: the release has noise
   multiplier ``z / sqrt(t)`` against them);
4. the decrypted sum divided by ``m`` (``num_sampled_clients``) is the mean of
   :mod:`bcfl_engine.dp` with noise ``z C / m`` (:attr:`~bcfl_engine.dp.GaussianDP.noise_std`);
   the accountant takes ``z`` alone, so the epsilon is the central mechanism's, against anyone
   but colluding parties.

The round commits the DP parameters and the task's spent epsilon in its metadata exactly as a
plaintext private round (:mod:`bcfl_engine.round_dp`); the audit recomputes the epsilon from
the chain and recombines the parties' stored shares bit for bit (the noise is inside them: the
audit checks that the released sum is what the signed shares give, not that noise is in them).
Only the plain mean is supported: a bucketed round's rule over bucket means has no stated
sensitivity here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from .dp import GaussianDP
from .errors import DecryptionRefused


def check_request(
    dp: GaussianDP | None,
    request: Any,
    records: Sequence[dict[str, Any]],
    refuse: Callable[[str], DecryptionRefused],
) -> float | None:
    """The standard deviation (at the decrypted sum's scale) a party's shares must carry for
    ``request``, or None without DP; ``refuse(why)`` is raised when the party's own ``dp`` and
    the request's differ, or the request is one whose sensitivity the noise does not cover
    (buckets, a weight other than 1)."""
    if dp is not None and not isinstance(dp, GaussianDP):
        raise refuse(f"dp must be a GaussianDP; got {type(dp).__name__}")
    if request.dp != dp:
        raise refuse(
            f"the request names DP parameters {_show(request.dp)}; this party agreed to {_show(dp)}"
        )
    if dp is None:
        return None
    if request.buckets is not None:
        raise refuse("DP noise on bucket sums: the robust rule's sensitivity is not stated")
    heavy = [r["client"] for r in records if int(r["weight"]) != 1]
    if heavy:
        raise refuse(
            f"client {heavy[0]} has weight != 1: the noise covers an unweighted sum "
            "(sensitivity clipping_norm) only"
        )
    return dp.sum_noise_std


def _show(dp: Any) -> str:
    if dp is None:
        return "none"
    return (
        f"(clipping_norm={dp.clipping_norm}, noise_multiplier={dp.noise_multiplier}, "
        f"num_sampled_clients={dp.num_sampled_clients}, delta={dp.delta}, budget={dp.budget})"
    )


def audit_distributed(
    ledger: Any,
    store: Any,
    key: str,
    task: int,
    round: int,
    meta: dict[str, Any],
    weights: Sequence[int],
    problems: list[str],
) -> list[str]:
    """What :func:`~bcfl_engine.audit.audit` checks of the privacy of a multiparty round with
    ``dp``, besides recombining its shares: the task's spent epsilon recomputed from the chain
    (:func:`~bcfl_engine.round_dp.audit_privacy`) and the sensitivity premise (every committed
    weight is 1). Findings go to ``problems``; returns the lines the audit reports."""
    from .errors import PayloadError
    from .round_dp import audit_privacy, read_dp

    try:
        read_dp(meta)
    except PayloadError as exc:  # committed so: a finding
        problems.append(str(exc))
        return ["privacy not checked"]
    lines = [audit_privacy(ledger, store, key, task, round, meta, problems)]
    heavy = sum(1 for w in weights if w != 1)
    if heavy:
        problems.append(
            f"{heavy} payload(s) of this private round have weight != 1: the parties' noise "
            "covers an unweighted sum only"
        )
    lines.append("distributed noise: every payload of weight 1 (sensitivity clipping_norm)")
    return lines


__all__ = ["audit_distributed", "check_request"]
