"""Aggregation rules: each a plain function on an ``[n, d]`` tensor, one module per rule.

Each module holds the public op (validate, choose the backend, call) and its pure-torch
reference ``<rule>_reference``. Modules load on first use, so importing this package is cheap.

>>> from bcfl_engine import rules
>>> rules.krum(x, f=2)              # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidArgument


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


RULES: dict[str, RuleInfo] = {
    r.name: r
    for r in (
        RuleInfo("mean", "aggregate", True, True, "weighted mean (FedAvg); f must be 0"),
        RuleInfo("median", "aggregate", False, True, "coordinate-wise median"),
        RuleInfo(
            "trimmed_mean", "aggregate", False, True, "drop f largest and f smallest per coordinate"
        ),
        RuleInfo(
            "krum", "aggregate", False, True, "the update closest to its n-f-2 nearest others"
        ),
        RuleInfo("multi_krum", "aggregate", False, True, "mean of the m best Krum scores"),
        RuleInfo(
            "bulyan", "aggregate", False, True, "Krum selection, then trimmed around the median"
        ),
        RuleInfo("geometric_median", "aggregate", True, True, "smoothed Weiszfeld (RFA)"),
        RuleInfo(
            "centered_clipping", "aggregate", False, True, "iterative clipping around a center"
        ),
        RuleInfo("clip", "pre", False, False, "scale each update to norm <= max_norm"),
        RuleInfo("nnm", "pre", False, True, "nearest-neighbour mixing"),
    )
}


def get(name: str) -> RuleInfo:
    """The rule called ``name``; InvalidArgument listing the known names otherwise."""
    try:
        return RULES[name]
    except (KeyError, TypeError):
        raise InvalidArgument(f"unknown rule {name!r}; known: {', '.join(RULES)}") from None


def __getattr__(name: str) -> Any:
    # rules.krum, rules.krum_reference, ...: load the rule's module on first use.
    stem = name.removesuffix("_reference")
    if stem in RULES:
        return getattr(importlib.import_module(f"{__name__}.{stem}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["RULES", "RuleInfo", "get", *RULES]
