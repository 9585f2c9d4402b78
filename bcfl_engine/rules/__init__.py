"""Aggregation rules: each a plain function on an ``[n, d]`` tensor, one module per rule.

Each module holds the public op (validate, choose the backend, call) and its pure-torch
reference ``<rule>_reference``. Kernels (Triton, numba) load on first use, not here.

>>> from bcfl_engine import rules
>>> rules.krum(x, f=2)              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument, PreconditionError


@dataclass(frozen=True)
class Precondition:
    """A rule's condition on the number of updates ``n`` for ``f`` Byzantine ones, from its
    paper: ``n >= per_f * f + base``. The one place it is written; the rules, the Flower
    strategies and the CLI all ask it."""

    per_f: int
    base: int
    text: str  # as the paper states it, e.g. "n > 2f + 2 (Blanchard et al. 2017)"

    def min_clients(self, f: int) -> int:
        """The fewest updates the rule needs to tolerate ``f`` Byzantine ones."""
        return self.per_f * f + self.base

    def holds(self, n: int, f: int) -> bool:
        return n >= self.min_clients(f)

    def max_f(self, n: int) -> int:
        """The largest ``f`` that ``n`` updates allow, or -1 when even ``f = 0`` fails."""
        return (n - self.base) // self.per_f if n >= self.base else -1


@dataclass(frozen=True)
class RuleInfo:
    """What :func:`bcfl_engine.aggregate` needs to know of a rule.

    ``kind`` is "aggregate" (``[n, d] -> [d]``) or "pre" (``[n, d] -> [n, d]``, applied before
    an aggregate); ``weighted`` rules take client weights; ``takes_f`` rules take ``f``.
    """

    name: str
    kind: str
    weighted: bool
    takes_f: bool
    summary: str
    precondition: Precondition | None = None

    def min_clients(self, f: int) -> int:
        """The fewest updates this rule needs for ``f`` (1 for a rule without a precondition)."""
        return 1 if self.precondition is None else self.precondition.min_clients(f)

    def check_precondition(self, n: int, f: object) -> int:
        """``f`` as an int; InvalidArgument if it is not an int >= 0, PreconditionError (stating
        the paper's condition) if ``n`` updates cannot tolerate it."""
        if not isinstance(f, int) or isinstance(f, bool) or f < 0:
            raise InvalidArgument(f"{self.name}: f must be an int >= 0; got {f!r}")
        if self.name == "mean" and f != 0:
            raise PreconditionError(f"mean tolerates no Byzantine client: f must be 0; got f={f}")
        pre = self.precondition
        if pre is not None and not pre.holds(n, f):
            raise PreconditionError(f"{self.name} requires {pre.text}; got n={n}, f={f}")
        return f

    @property
    def fn(self) -> Callable[..., Any]:
        return getattr(importlib.import_module(f"{__name__}.{self.name}"), self.name)

    @property
    def reference(self) -> Callable[..., Any]:
        module = importlib.import_module(f"{__name__}.{self.name}")
        return getattr(module, f"{self.name}_reference")

    @property
    def kernels(self) -> tuple[Any, ...]:
        return tuple(importlib.import_module(f"{__name__}.{self.name}").KERNELS)


_YIN = Precondition(2, 1, "n > 2f (Yin et al. 2018)")
_KRUM = Precondition(2, 3, "n > 2f + 2 (Blanchard et al. 2017)")

RULES: dict[str, RuleInfo] = {
    r.name: r
    for r in (
        RuleInfo("mean", "aggregate", True, True, "weighted mean (FedAvg); f must be 0"),
        RuleInfo("median", "aggregate", False, True, "coordinate-wise median", _YIN),
        RuleInfo(
            "trimmed_mean",
            "aggregate",
            False,
            True,
            "drop f largest and f smallest per coordinate",
            _YIN,
        ),
        RuleInfo(
            "krum",
            "aggregate",
            False,
            True,
            "the update closest to its n-f-2 nearest others",
            _KRUM,
        ),
        RuleInfo("multi_krum", "aggregate", False, True, "mean of the m best Krum scores", _KRUM),
        RuleInfo(
            "bulyan",
            "aggregate",
            False,
            True,
            "Krum selection, then trimmed around the median",
            Precondition(4, 3, "n >= 4f + 3 (El Mhamdi et al. 2018)"),
        ),
        RuleInfo(
            "geometric_median",
            "aggregate",
            True,
            True,
            "smoothed Weiszfeld (RFA)",
            Precondition(2, 1, "n > 2f (Pillutla et al. 2022)"),
        ),
        RuleInfo(
            "centered_clipping",
            "aggregate",
            False,
            True,
            "iterative clipping around a center",
            Precondition(2, 1, "n > 2f (Karimireddy et al. 2021)"),
        ),
        RuleInfo("clip", "pre", False, False, "scale each update to norm <= max_norm"),
        RuleInfo(
            "nnm",
            "pre",
            False,
            True,
            "nearest-neighbour mixing",
            Precondition(2, 1, "n > 2f (Allouah et al. 2023)"),
        ),
    )
}


def get(name: str) -> RuleInfo:
    """The rule called ``name``; InvalidArgument listing the known names otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise InvalidArgument(f"unknown rule {name!r}; known: {', '.join(RULES)}") from None


# The public ops, imported by name: this also makes ``rules.median`` the function, not the
# submodule that Python would otherwise bind to that attribute once it is imported.
from .bulyan import bulyan, bulyan_reference  # noqa: E402
from .centered_clipping import centered_clipping, centered_clipping_reference  # noqa: E402
from .clip import clip, clip_reference  # noqa: E402
from .geometric_median import geometric_median, geometric_median_reference  # noqa: E402
from .krum import krum, krum_reference  # noqa: E402
from .mean import mean, mean_reference  # noqa: E402
from .median import median, median_reference  # noqa: E402
from .multi_krum import multi_krum, multi_krum_reference  # noqa: E402
from .nnm import nnm, nnm_reference  # noqa: E402
from .trimmed_mean import trimmed_mean, trimmed_mean_reference  # noqa: E402

__all__ = [
    "RULES",
    "Precondition",
    "RuleInfo",
    "bulyan",
    "bulyan_reference",
    "centered_clipping",
    "centered_clipping_reference",
    "clip",
    "clip_reference",
    "geometric_median",
    "geometric_median_reference",
    "get",
    "krum",
    "krum_reference",
    "mean",
    "mean_reference",
    "median",
    "median_reference",
    "multi_krum",
    "multi_krum_reference",
    "nnm",
    "nnm_reference",
    "trimmed_mean",
    "trimmed_mean_reference",
]
