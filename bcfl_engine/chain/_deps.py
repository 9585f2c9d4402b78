"""Lazy imports of the ``chain`` extra (web3, eth-tester, eth-account), with a typed error."""

from __future__ import annotations

import importlib
from types import ModuleType

from ..errors import MissingDependency


def need(module: str) -> ModuleType:
    """Imports ``module`` or raises MissingDependency naming the extra that installs it."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise MissingDependency(
            f"{module} is needed for the ledger and payload signatures ({exc}); "
            "pip install 'bcfl_engine[chain]'"
        ) from exc
