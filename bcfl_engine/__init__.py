"""bcfl_engine: the aggregation engine of blockchain-based federated learning.

Secure aggregation (CKKS via TenSEAL, :mod:`bcfl_engine.he`), Byzantine-robust rules
(:mod:`bcfl_engine.rules`) and on-chain round proofs (:mod:`bcfl_engine.chain`).

>>> import bcfl_engine as be
>>> out = be.aggregate(updates, rule="trimmed_mean", f=2)   # doctest: +SKIP
"""

from __future__ import annotations

from . import errors, rules
from .aggregate import aggregate
from .updates import ParamEntry, ParamSpec, UpdateBatch, keccak256

__version__ = "0.1.0"

__all__ = [
    "ParamEntry",
    "ParamSpec",
    "UpdateBatch",
    "__version__",
    "aggregate",
    "errors",
    "keccak256",
    "rules",
]
