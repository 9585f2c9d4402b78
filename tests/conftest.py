"""Shared fixtures: the backends to test and the awkward shapes every rule is checked on."""

from __future__ import annotations

import os

import pytest

# The Triton interpreter runs kernels on CPU tensors: every kernel is checked without a GPU.
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch

from bcfl_engine.backends import _load_native

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def backend_params() -> list:
    """torch, native and triton, each skipped with its reason where it cannot run here."""
    params = [pytest.param("torch", id="torch")]
    reason = _load_native()[1]
    if reason and os.environ.get("BCFL_REQUIRE_NATIVE") == "1":
        # CI builds the extension strictly: a missing native backend there is a failure.
        raise RuntimeError(f"BCFL_REQUIRE_NATIVE=1 but {reason}")
    params.append(
        pytest.param(
            "native", id="native", marks=pytest.mark.skipif(bool(reason), reason=str(reason))
        )
    )
    try:
        import triton  # noqa: F401

        triton_reason = None
    except ImportError as exc:
        triton_reason = f"triton not installed ({exc})"
    params.append(
        pytest.param(
            "triton",
            id="triton",
            marks=pytest.mark.skipif(bool(triton_reason), reason=str(triton_reason)),
        )
    )
    return params


@pytest.fixture(params=backend_params())
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(params=list(DTYPES.values()), ids=list(DTYPES))
def dtype(request: pytest.FixtureRequest) -> torch.dtype:
    return request.param
