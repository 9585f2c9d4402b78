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
