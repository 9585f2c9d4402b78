"""What a Flower strategy of the engine does with replies it cannot use as they are.

A drop-in must be at least as forgiving as the strategy it replaces: a reply with NaN or an
infinity, or with a weight that is not a count, is left out and named in a warning; too few
replies for a rule's precondition (a failed client, Flower's default of 2 simulated nodes)
are a warning and the policy the user chose (:class:`OnTooFew`), never an exception out of
``aggregate_train`` / ``aggregate_fit``. The preconditions themselves are the rules'
(:attr:`bcfl_engine.rules.RuleInfo.precondition`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import StrEnum
from logging import WARNING

import numpy as np

from .. import rules
from ..errors import InvalidArgument
from .flower_arrays import Stack

try:
    from flwr.common.logger import log
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    from ..errors import MissingDependency

    raise MissingDependency(
        f"the Flower integration needs flwr ({exc}); pip install 'bcfl_engine[flower]'"
    ) from None


class OnTooFew(StrEnum):
    """What a strategy does when a round has fewer replies than its rule's precondition needs.

    ``SKIP`` (the default): aggregate nothing this round, so the model stays as it was
    (``aggregate_train`` returns ``(None, None)``, as Flower's Bulyan does). ``LOWER_F``:
    aggregate with the largest ``f`` the precondition allows for the replies received
    (skip if even ``f = 0`` is not allowed).
    """

    SKIP = "skip"
    LOWER_F = "lower_f"


def as_policy(value: OnTooFew | str) -> OnTooFew:
    """``value`` as an :class:`OnTooFew`; InvalidArgument naming the choices otherwise."""
    try:
        return OnTooFew(value)
    except ValueError:
        choices = ", ".join(repr(p.value) for p in OnTooFew)
        raise InvalidArgument(f"on_too_few must be one of {choices}; got {value!r}") from None


def warn(server_round: int, text: str, *args: object) -> None:
    """A WARNING in Flower's log, prefixed with the engine and the round."""
    log(WARNING, "bcfl_engine: round %s: " + text, server_round, *args)


def resolve_f(
    rule: str, n: int, f: int, policy: OnTooFew, server_round: int, *, what: str | None = None
) -> int | None:
    """The ``f`` to aggregate ``n`` replies with, or None to skip the round (with a warning).

    ``what`` names the rule in the warning (a drop-in's class name; the rule's name if None).
    """
    pre = rules.get(rule).precondition
    if pre is None or pre.holds(n, f):
        return f
    name = what or rule
    lower = pre.max_f(n)
    if policy is OnTooFew.LOWER_F and lower >= 0:
        warn(
            server_round,
            "%d replies are too few for %s with f=%d (it requires %s): aggregating with f=%d "
            "(on_too_few='lower_f'), so fewer faulty clients are tolerated this round",
            n,
            name,
            f,
            pre.text,
            lower,
        )
        return lower
    warn(
        server_round,
        "%d replies are too few for %s with f=%d (it requires %s): no aggregate this round, "
        "the model stays as it was (on_too_few=%r)",
        n,
        name,
        f,
        pre.text,
        policy.value,
    )
    return None


def first_nonfinite(arrays: Sequence[np.ndarray]) -> int | None:
    """The index of the first array holding a NaN or an infinity, or None.

    A finite float64 sum proves an array finite in one pass without a boolean temporary; only
    a non-finite sum pays for the exact check.
    """
    for j, a in enumerate(arrays):
        a = np.asarray(a)
        if a.dtype.kind not in "fc":
            continue
        if math.isfinite(float(np.sum(a, dtype=np.float64))) or np.isfinite(a).all():
            continue
        return j
    return None


def screen(
    arrays: Sequence[Sequence[np.ndarray]],
    weights: Sequence[object],
    names: Sequence[str],
    keys: Sequence[str],
    server_round: int,
    *,
    finite: bool = True,
    reasons: list[str] | None = None,
) -> list[int]:
    """The replies fit to aggregate, by index; each one left out is named in a warning.

    Left out: a weight that is not a finite number >= 0, arrays whose shapes differ from the
    first kept reply's, and (unless ``finite`` is False: the caller checks the stacked
    arrays with :func:`finite_rows`) an array with NaN or an infinity. ``reasons``, if given,
    receives ``"<name>: <why>"`` for each one left out.
    """
    kept: list[int] = []
    shapes: list[tuple[int, ...]] = []  # the first kept reply's
    for i, (a, w, name) in enumerate(zip(arrays, weights, names, strict=True)):
        ok_weight = isinstance(w, (int, float)) and not isinstance(w, bool)
        if not ok_weight or not math.isfinite(float(w)) or float(w) < 0:  # type: ignore[arg-type]
            _leave_out(server_round, reasons, name, f"its weight {w!r} is not a count >= 0")
            continue
        if kept and [np.shape(x) for x in a] != shapes:
            why = f"its array shapes differ from {names[kept[0]]}'s"
            _leave_out(server_round, reasons, name, why)
            continue
        bad = first_nonfinite(a) if finite else None
        if bad is not None:
            label = keys[bad] if bad < len(keys) else str(bad)
            _leave_out(server_round, reasons, name, f"array {label!r} holds NaN or infinity")
            continue
        if not kept:
            shapes = [np.shape(x) for x in a]
        kept.append(i)
    return kept


def usable_weights(
    kept: Sequence[int], weights: Sequence[float], names: Sequence[str], server_round: int
) -> bool:
    """False (with a warning) when the kept replies' weights sum to 0: no weighted mean exists."""
    if kept and sum(float(weights[i]) for i in kept) > 0:
        return True
    if kept:
        warn(
            server_round,
            "the weights of %s sum to 0: no weighted mean this round",
            ", ".join(names[i] for i in kept),
        )
    return False


def finite_rows(
    stack: Stack,
    names: Sequence[str],
    keys: Sequence[str],
    server_round: int,
    reasons: list[str] | None = None,
) -> list[int]:
    """The rows of ``stack`` without NaN or infinity; each other one is named in a warning.

    One pass over the stacked matrices: a finite row sum proves a row finite, and only a row
    whose sum is not finite (NaN, infinity, or an overflow of huge values) is checked exactly.
    """
    sums = stack.x32.sum(dim=1).numpy().astype(np.float64) + stack.x64.sum(axis=1)
    kept = []
    for i, total in enumerate(sums.tolist()):
        if math.isfinite(total):
            kept.append(i)
            continue
        bad = first_nonfinite(stack.unstack(stack.x32[i], stack.x64[i]))
        if bad is None:
            kept.append(i)
        else:
            label = keys[bad] if bad < len(keys) else str(bad)
            why = f"array {label!r} holds NaN or infinity"
            _leave_out(server_round, reasons, names[i], why)
    return kept


def _leave_out(server_round: int, reasons: list[str] | None, name: str, why: str) -> None:
    warn(server_round, "left out %s: %s", name, why)
    if reasons is not None:
        reasons.append(f"{name}: {why}")
