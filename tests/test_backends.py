"""Backend dispatch: automatic choice, forced backends, BCFL_BACKEND, and the reasons given."""

from __future__ import annotations

import pytest
import torch

from bcfl_engine import backends
from bcfl_engine.backends import Kernel, choose
from bcfl_engine.errors import BackendUnavailable, InvalidArgument

KERNELS = (
    Kernel("torch", lambda x: "torch"),
    Kernel("native", lambda x: "native", needs="cpp"),
    Kernel("triton", lambda x: "triton", limits=lambda x: "too wide" if x.shape[1] > 8 else None),
)


def test_automatic_choice_prefers_native_on_cpu_and_never_the_interpreter(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("BCFL_BACKEND", raising=False)
    x = torch.zeros(2, 4)
    expected = "torch" if backends._load_native()[1] else "native"
    assert choose("op", KERNELS, x).backend == expected
    assert choose("op", KERNELS, x, backend="triton").backend == "triton"


def test_forced_backend_that_cannot_run_says_why(monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    with pytest.raises(BackendUnavailable, match="too wide"):
        choose("op", KERNELS, torch.zeros(2, 16), backend="triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(BackendUnavailable, match="CUDA tensor"):
        choose("op", KERNELS, torch.zeros(2, 4), backend="triton")
    with pytest.raises(BackendUnavailable, match="no 'native' kernel"):
        choose("op", KERNELS[:1], torch.zeros(2, 4), backend="native")


def test_environment_variable_forces_a_backend(monkeypatch) -> None:
    monkeypatch.setenv("BCFL_BACKEND", "torch")
    assert choose("op", KERNELS, torch.zeros(2, 4)).backend == "torch"
    monkeypatch.setenv("BCFL_BACKEND", "cuda")
    with pytest.raises(InvalidArgument, match="backend must be one of"):
        choose("op", KERNELS, torch.zeros(2, 4))


def test_library_reasons_names_every_backend() -> None:
    reasons = backends.library_reasons()
    assert set(reasons) == {"torch", "native (C++)", "native (numba)", "triton"}
    assert reasons["torch"] is None
