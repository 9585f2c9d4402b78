"""The demo's differentially private line: FedAvg with central DP (``--dp-noise``, ``--dp-clip``,
``--dp-budget``).

The private run is FedAvg without attack (the mean is the only rule with a stated sensitivity;
see :mod:`bcfl_engine.dp`), every hospital in every round (sample rate 1, ``m`` = the number of
hospitals). Each round goes through :class:`~bcfl_engine.round.AggregationRound` with ``dp=``,
which commits the parameters and the spent epsilon; a round past ``--dp-budget`` is refused, and
from then on the run's model stays as it was (the table and the plot say where it stopped).
"""

from __future__ import annotations

import math
from typing import Any

from ..dp import GaussianDP, account

LABEL = "mean, dp"


def mechanism(
    noise: float | None, clip: float | None, budget: float | None, clients: int
) -> GaussianDP | None:
    """The demo's :class:`GaussianDP`, or None without ``--dp-noise``; InvalidArgument from
    GaussianDP on bad values."""
    if noise is None:
        return None
    return GaussianDP(
        clipping_norm=1.0 if clip is None else clip,
        noise_multiplier=noise,
        num_sampled_clients=clients,
        budget=budget,
    )


def spent(dp: GaussianDP | None, rounds: int) -> float | None:
    """Epsilon after ``rounds`` committed private rounds (sample rate 1), None for a run without
    DP (no guarantee); what each round's metadata holds."""
    if dp is None:
        return None
    eps = account([(dp.noise_multiplier, 1.0)] * rounds, dp.delta).epsilon
    return eps if math.isfinite(eps) else None


def show(eps: float | None) -> str:
    return "-" if eps is None else f"{eps:.3g}"


def summary(dp: GaussianDP | None, stopped: int | None) -> dict[str, Any] | None:
    """What summary.json says of a run's DP."""
    if dp is None:
        return None
    return {**dp.as_meta(), "noise_std": dp.noise_std, "stopped_at_round": stopped}
