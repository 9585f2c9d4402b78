"""The Flower integration's side of the round pipeline: what a client signs, and one server
round of replies submitted, aggregated and committed through an
:class:`~bcfl_engine.round.AggregationRound`."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ..errors import BcflError, InvalidArgument
from ..protocol import encode_update
from ..updates import ParamSpec
from .flower_arrays import SELECTION_RULES, paper_selection
from .flower_policy import OnTooFew, as_policy, resolve_f, warn

if TYPE_CHECKING:
    from flwr.app import ConfigRecord

    from ..round import AggregationRound

RECORD_KEY = "bcfl"
# The train config's key for the registry round that a server round collects (see ChainRounds).
ROUND_KEY = "bcfl-round"


class ChainRounds:
    """Which registry round each server round collects and commits.

    The registry takes a task's rounds in order, with no gap, but a Flower server round may
    commit nothing (every reply failed or was rejected, or too few under
    ``on_too_few="skip"``) and Flower then goes on to the next server round. That round must
    collect the registry round that is still open, not one past it, or its commit (and every
    later one) would be refused. The strategy names that round to the clients in the train
    config under :data:`ROUND_KEY`, and they sign for it (:func:`sign_reply`).
    """

    def __init__(self) -> None:
        self.skipped = 0  # server rounds so far that committed nothing

    def of(self, server_round: int) -> int:
        """The registry round that ``server_round`` collects."""
        return server_round - self.skipped

    def settle(self, committed: bool) -> None:
        """Record how the last server round ended."""
        if not committed:
            self.skipped += 1


def encode_arrays(arrays: Sequence[np.ndarray]) -> bytes:
    """The bytes a client signs: its arrays flattened in order, float32 little-endian (the
    round's payload format: a float64 model is committed, and aggregated, in float32)."""
    return encode_update(ParamSpec.infer(list(arrays)).flatten(list(arrays)))


def sign_reply(
    arrays: Sequence[np.ndarray],
    key: Any,
    task: int,
    server_round: int,
    domain: Any,
    weight: int,
) -> ConfigRecord:
    """The ConfigRecord a client adds to its train reply when the server commits rounds.

    ``server_round`` is the round the reply is for: the registry round the server named in
    the train config under :data:`ROUND_KEY` (it differs from Flower's ``server-round`` once a
    server round committed nothing; see :class:`ChainRounds`), else the server round.
    ``key`` is the client's secp256k1 private key (32 bytes or hex); ``domain`` is the
    ledger's :attr:`~bcfl_engine.chain.Ledger.domain` (chain id and registry address);
    ``weight`` is the ``num-examples`` the reply reports (a positive int): it is signed with
    the arrays, so no relay can change how much the reply counts.
    """
    from ..round import sign_payload

    if isinstance(weight, bool) or not isinstance(weight, (int, np.integer)) or weight <= 0:
        raise InvalidArgument(f"weight must be a positive int (num-examples); got {weight!r}")
    payload = sign_payload(
        key, task, server_round, encode_arrays(arrays), domain, weight=int(weight)
    )
    from flwr.app import ConfigRecord

    return ConfigRecord({"address": payload.client, "signature": bytes(payload.signature or b"")})


def round_options(strategy: Any) -> dict[str, Any]:
    """The keyword arguments that make an AggregationRound aggregate as ``strategy`` does."""
    return {
        "rule": strategy.rule,
        "f": strategy.f,
        "params": dict(strategy.params),
        "pre": list(strategy.pre),
        "backend": strategy.backend,
    }


def check_round(
    rnd: AggregationRound, rule: str, f: int, params: dict[str, Any], pre: Sequence[Any]
) -> None:
    """InvalidArgument unless ``rnd`` aggregates as the strategy does (rule, f, params, pre)."""
    if (rnd.rule, rnd.f, dict(rnd.params), list(rnd.pre)) != (rule, f, dict(params), list(pre)):
        raise InvalidArgument(
            f"the rounds factory builds rounds with rule={rnd.rule!r}, f={rnd.f}, "
            f"params={rnd.params}, pre={rnd.pre}, but this strategy aggregates with "
            f"rule={rule!r}, f={f}, params={params}, pre={list(pre)}: "
            "build them with AggregationRound(..., **strategy.round_options)"
        )


def integer_weight(w: float) -> int | None:
    """``w`` as a positive int (a count of examples), or None if it is not one."""
    return int(w) if float(w).is_integer() and w > 0 else None


def commit_arrays(
    rnd: AggregationRound,
    arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[float],
    signatures: Sequence[tuple[str, bytes] | None],
    names: Sequence[str],
    *,
    on_too_few: OnTooFew | str = OnTooFew.SKIP,
) -> tuple[list[np.ndarray] | None, list[str], list[int] | None]:
    """Run one round through the pipeline: submit each client's signed arrays (with its
    integer weight), aggregate, commit.

    Returns the aggregate in the clients' structure (None when no reply is left, or too few
    under ``on_too_few="skip"``: nothing is committed then), the replies left out and why,
    and the replies that went into the aggregate (for a selection rule, those it selected).
    A reply that is unsigned, mis-signed, from a non-participant, of the wrong size, not
    finite, or whose weight is not a positive integer is left out, as a Byzantine-robust
    aggregator must. ``on_too_few="lower_f"`` lowers the round's ``f`` before it is
    finalized, so its committed metadata (and any audit) uses the ``f`` it ran with.

    The arrays may be read-only views over the replies' bytes, which the pipeline reads and
    never writes (torch's warning about them is silenced).
    """
    from ..round import Payload

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The given NumPy array is not writable", UserWarning)
        policy = as_policy(on_too_few)
        spec = ParamSpec.infer(list(arrays[0]))
        refused: list[tuple[int, str]] = []  # (reply index, why), reported in reply order
        accepted: list[int] = []
        burst, at = [], []
        for i, (a, w, sig, name) in enumerate(zip(arrays, weights, signatures, names, strict=True)):
            if sig is None:
                refused.append(
                    (i, f"{name}: no signature (ConfigRecord {RECORD_KEY!r}; see sign_reply)")
                )
                continue
            count = integer_weight(w)
            if count is None:
                refused.append((i, f"{name}: weight {w!r} is not a positive integer count"))
                continue
            burst.append(Payload(sig[0], encode_arrays(a), sig[1], weight=count))
            at.append(i)
        # One burst: the signers recovered at once, one durable group, one fsync.
        for i, outcome in zip(at, rnd.submit_many(burst), strict=True):
            if isinstance(outcome, BcflError):
                refused.append((i, f"{names[i]}: {outcome}"))
            else:
                accepted.append(i)
        rejected = [why for _, why in sorted(refused)]
        if len(rnd) == 0:
            warn(rnd.round, "no reply was accepted: nothing aggregated or committed")
            return None, rejected, None
        f = resolve_f(rnd.rule, len(rnd), rnd.f, policy, rnd.round)
        if f is None:
            warn(
                rnd.round,
                "round %d of task %s is not committed; the next server round collects it again "
                "(see ChainRounds; on_too_few='lower_f' commits it now with a lower f)",
                rnd.round,
                rnd.task,
            )
            return None, rejected, None
        rnd.f = f
        result = rnd.finalize()
        out = [np.asarray(a) for a in spec.unflatten(torch.as_tensor(result.update))]
        used: list[int] = accepted
        if rnd.rule in SELECTION_RULES and accepted:
            from ..rules._distances import sq_dists

            x = torch.stack([spec.flatten(list(arrays[i])) for i in accepted])
            chosen = paper_selection(rnd.rule, sq_dists(x, rnd.backend), f, rnd.params.get("m"))
            used = [accepted[i] for i in chosen]
        return out, rejected, used
