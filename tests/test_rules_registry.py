"""The rule registry: every rule reachable by name, as a function, with a reference and kernels."""

from __future__ import annotations

import importlib
import re

import pytest
import torch

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


@pytest.mark.parametrize("name", [n for n, r in rules.RULES.items() if r.precondition is not None])
def test_the_registry_precondition_is_the_one_each_rule_enforces(name: str) -> None:
    """min_clients(f) updates pass the rule's own check and one fewer fails it, for several f;
    max_f(n) is the largest f that n allows."""
    from bcfl_engine.errors import PreconditionError

    info = rules.get(name)
    pre = info.precondition
    assert pre is not None
    kw = {"max_norm": 1.0} if name == "clip" else {}
    for f in (0, 1, 2):
        n = info.min_clients(f)
        assert pre.holds(n, f) and not pre.holds(n - 1, f)
        assert pre.max_f(n) >= f and pre.max_f(n - 1) < f
        x = torch.randn(n, 5)
        info.fn(x, f=f, **kw)  # must not raise
        if n - 1 >= 1:
            with pytest.raises(PreconditionError, match=re.escape(pre.text)):
                info.fn(x[: n - 1], f=f, **kw)
    assert pre.max_f(pre.base - 1) == -1


def test_mean_takes_no_f_and_f_must_be_an_int() -> None:
    from bcfl_engine.errors import PreconditionError

    x = torch.randn(4, 3)
    with pytest.raises(PreconditionError, match="f must be 0"):
        rules.mean(x, f=1)
    for bad in (-1, 1.5, True, "1"):
        with pytest.raises(InvalidArgument, match="f must be an int >= 0"):
            rules.median(x, f=bad)
