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


ANVIL = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "contracts",
    "node_modules",
    ".bin",
    "anvil",
)


@pytest.fixture(scope="session")
def anvil_url():
    """URL of one anvil node (npm ``@foundry-rs/anvil``) on 127.0.0.1 for the session; its dev
    key 0 (:data:`ANVIL_KEY` in the tests that use it) is funded. Stopped after the session."""
    import signal
    import socket
    import subprocess
    import time
    import urllib.request

    assert os.path.exists(ANVIL), f"{ANVIL} is missing: run `npm ci --prefix contracts` first"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [ANVIL, "--host", "127.0.0.1", "--port", str(port), "--hardfork", "prague"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # its own process group: the npm wrapper and anvil stop together
    )
    url, body = (
        f"http://127.0.0.1:{port}",
        b'{"jsonrpc":"2.0","id":1,"method":"eth_chainId","params":[]}',
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                req = urllib.request.Request(url, body, {"Content-Type": "application/json"})
                urllib.request.urlopen(req, timeout=2).read()
                break
            except OSError:
                assert proc.poll() is None and time.monotonic() < deadline, "anvil did not start"
                time.sleep(0.2)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)


@pytest.fixture(autouse=True, scope="session")
def _single_thread_blas():
    """numpy's BLAS on one thread for the whole session.

    The Triton interpreter runs tl.dot as a numpy matmul; threaded OpenBLAS next to torch's
    OpenMP threads on 2 cores made a [32, 512] x [512, 32] product ~1000x slower (40 ms).
    """
    from threadpoolctl import threadpool_limits  # comes with scikit-learn (dev extra)

    with threadpool_limits(1, user_api="blas"):
        yield
