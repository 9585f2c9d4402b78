"""The rule registry: every rule reachable by name, as a function, with a reference and kernels."""

from __future__ import annotations

import importlib

import pytest

import bcfl_engine as be
from bcfl_engine import rules
from bcfl_engine.errors import InvalidArgument


@pytest.mark.parametrize("name", list(rules.RULES))
def test_every_rule_is_a_function_with_a_reference_and_a_torch_kernel(name: str) -> None:
    importlib.import_module(f"bcfl_engine.rules.{name}")  # importing the module must not shadow
    info = rules.get(name)
    assert callable(getattr(rules, name)) and getattr(rules, name) is info.fn
    assert getattr(rules, f"{name}_reference") is info.reference
    assert "torch" in {k.backend for k in info.kernels}


def test_unknown_rule_and_misused_pre_step_are_rejected() -> None:
    x = [[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]]
    import numpy as np

    arr = np.array(x, dtype=np.float32)
    with pytest.raises(InvalidArgument, match="unknown rule 'avg'; known: mean"):
        be.aggregate(arr, rule="avg")
    with pytest.raises(InvalidArgument, match="pre-aggregation step"):
        be.aggregate(arr, rule="clip")
    with pytest.raises(InvalidArgument, match="does not take client weights"):
        be.aggregate(arr, rule="median", weights=[1, 1, 1])
    out = be.aggregate(arr, rule="median", pre=[("clip", {"max_norm": 1.0})])
    assert out.shape == (2,) and float(np.linalg.norm(out)) <= 1.0 + 1e-6
