"""Backend dispatch: automatic choice, forced backends, BCFL_BACKEND, and the reasons given."""

from __future__ import annotations

import pytest
import torch

import bcfl_engine as be
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


# ---- the native bindings check what they are given -------------------------------------------

needs_native = pytest.mark.skipif(
    bool(backends._load_native()[1]), reason=str(backends._load_native()[1])
)


def _f32(*shape: int) -> torch.Tensor:
    return torch.zeros(*shape, dtype=torch.float32)


def _i64(*values: int) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.int64)


# binding -> arguments that run, for x [5, 8]
def _good(name: str) -> list:
    x = torch.randn(5, 8)
    return {
        "weighted_mean": [x, _f32(5), _f32(8)],
        "combine_distances": [
            x,
            _f32(5),
            0.5,
            _f32(8),
            _f32(8),
            torch.zeros(5, dtype=torch.float64),
        ],
        "clip_rows": [x, 1.0, _f32(5, 8), torch.zeros(5, dtype=torch.float64)],
        "median": [x, _f32(8)],
        "trimmed_mean": [x, 1, _f32(8)],
        "gram_centered": [x, _f32(8), torch.zeros(5, 5, dtype=torch.float64)],
        "select_mean": [x, _i64(0, 3), _f32(8)],
        "bulyan_select": [
            torch.rand(5, 5, dtype=torch.float64),
            1,
            torch.zeros(3, dtype=torch.int64),
        ],
        "bulyan_coordinates": [x, _i64(0, 2, 4), 1, _f32(8)],
    }[name]


BINDINGS = [
    "weighted_mean",
    "combine_distances",
    "clip_rows",
    "median",
    "trimmed_mean",
    "gram_centered",
    "select_mean",
    "bulyan_select",
    "bulyan_coordinates",
]


# Arguments whose length is free (the rows to take, the rows to choose).
FREE_SIZE = {"select_mean": {1}, "bulyan_select": {2}, "bulyan_coordinates": {1}}


def _variants(name: str, args: list) -> list[tuple[str, list]]:
    """Each tensor argument made wrong in each way: dtype, layout, size, not a tensor."""
    out = []
    for k, a in enumerate(args):
        if not isinstance(a, torch.Tensor):
            continue
        bad_dtype = a.to(torch.int32) if a.dtype != torch.int32 else a.float()
        transposed = a.t() if a.dim() == 2 and a.shape[0] != a.shape[1] else a.reshape(-1)[::2]
        for why, b in (
            ("dtype", bad_dtype),
            (
                "contiguous",
                transposed if a.dim() == 2 else torch.zeros(a.numel() * 2, dtype=a.dtype)[::2],
            ),
            ("size", torch.zeros(a.numel() + 1, dtype=a.dtype).reshape(-1)),
            ("list", a.tolist()),
        ):
            if why == "size" and k in FREE_SIZE.get(name, ()):
                continue
            out.append((f"arg{k}-{why}", [*args[:k], b, *args[k + 1 :]]))
    return out


@needs_native
@pytest.mark.parametrize("name", BINDINGS)
def test_each_binding_rejects_wrong_dtype_layout_and_size(name: str) -> None:
    from bcfl_engine.errors import InvalidArgument as Typed

    fn = getattr(backends.native(), name)
    fn(*_good(name))  # the good call runs
    for why, args in _variants(name, _good(name)):
        outputs = [a.clone() for a in args if isinstance(a, torch.Tensor)]
        with pytest.raises(Typed) as err:
            fn(*args)
        assert name in str(err.value), (why, str(err.value))
        # Nothing was written: every tensor argument is as it was.
        after = [a for a in args if isinstance(a, torch.Tensor)]
        assert all(torch.equal(a, b) for a, b in zip(after, outputs, strict=True)), why


@needs_native
def test_bindings_reject_bad_counts_and_rows() -> None:
    lib = backends.native()
    x = torch.randn(5, 8)
    cases = [
        (lambda: lib.trimmed_mean(x, 3, _f32(8)), "2f < n"),
        (lambda: lib.trimmed_mean(x, -1, _f32(8)), "0 <= f"),
        (lambda: lib.select_mean(x, _i64(0, 5), _f32(8)), "out of"),
        (lambda: lib.select_mean(x, _i64(-1), _f32(8)), "out of"),
        (lambda: lib.select_mean(x, torch.zeros(0, dtype=torch.int64), _f32(8)), "at least one"),
        (lambda: lib.bulyan_coordinates(x, _i64(0, 1), 3, _f32(8)), "beta"),
        (lambda: lib.bulyan_coordinates(x, _i64(0, 9, 1), 1, _f32(8)), "out of"),
        (
            lambda: lib.bulyan_select(
                torch.zeros(5, 4, dtype=torch.float64), 1, torch.zeros(3, dtype=torch.int64)
            ),
            "square",
        ),
        (
            lambda: lib.bulyan_select(
                torch.zeros(5, 5, dtype=torch.float64), 1, torch.zeros(6, dtype=torch.int64)
            ),
            "theta",
        ),
        (lambda: lib.clip_rows(x, 0.0, _f32(5, 8), None), "max_norm"),
        (lambda: lib.weighted_mean(x, _f32(5), _f32(7)), "shape must be"),
        (lambda: lib.clip_rows(x, 1.0, x, torch.zeros(4, dtype=torch.float64)), "norms"),
    ]
    for call, what in cases:
        with pytest.raises(InvalidArgument, match=what):
            call()


@needs_native
def test_bindings_refuse_outputs_that_overlap_inputs() -> None:
    lib = backends.native()
    x = torch.randn(5, 8)
    with pytest.raises(InvalidArgument, match="overlaps"):
        lib.weighted_mean(x, _f32(5), x[1])
    with pytest.raises(InvalidArgument, match="overlaps"):
        lib.median(x, x[2])
    lib.clip_rows(x, 1.0, x, None)  # in place: float32 clip may write over its input
    out = _f32(5, 16)
    h = out.reshape(-1).view(torch.float16)[:80].reshape(5, 16)  # the first half of out
    with pytest.raises(InvalidArgument, match="overlaps"):  # not in place: a different dtype
        lib.clip_rows(h, 1.0, out, None)


# ---- read-only and memory-mapped inputs are never written --------------------------------------

READONLY_SCRIPT = r"""
import sys, warnings
import numpy as np, torch
import bcfl_engine as be
from bcfl_engine import rules, backends
from bcfl_engine.errors import InvalidArgument

warnings.simplefilter("ignore")
path, backend = sys.argv[1], sys.argv[2]
n, d = 6, 300
m = np.memmap(path, dtype=np.float32, mode="r", shape=(n, d))
before = np.array(m)
t = torch.from_numpy(m)
outcomes = []
# In-place clip on the read-only map: a typed error, not a SIGSEGV.
try:
    rules.clip(t, max_norm=1e-3, inplace=True, backend=backend)
    outcomes.append("clip: no error")
except InvalidArgument as exc:
    outcomes.append("clip: " + type(exc).__name__)
try:
    be.aggregate(m, rule="mean", pre=[("clip", {"max_norm": 1e-3, "inplace": True})], backend=backend)
    outcomes.append("aggregate clip: no error")
except InvalidArgument as exc:
    outcomes.append("aggregate clip: " + type(exc).__name__)
if backend == "native":
    try:
        backends.native().clip_rows(t, 1e-3, t, None)
        outcomes.append("binding: no error")
    except InvalidArgument as exc:
        outcomes.append("binding: " + type(exc).__name__)
# Every rule reads a read-only map through be.aggregate, and leaves it as it was.
for rule, f in (("mean", 0), ("median", 1), ("trimmed_mean", 1), ("krum", 1), ("geometric_median", 1)):
    out = be.aggregate(m, rule=rule, f=f, backend=backend)
    assert out.shape == (d,) and np.isfinite(out).all(), rule
assert np.array_equal(np.array(m), before)
print(";".join(outcomes))
"""


@pytest.mark.parametrize("backend", ["torch", "native", "triton"])
def test_read_only_memmap_is_never_written(tmp_path, backend: str) -> None:
    # A crash (SIGSEGV on a write to a read-only page) must fail this test, not end pytest:
    # the calls run in a child process.
    import subprocess
    import sys

    import numpy as np

    if backend == "native" and backends._load_native()[1]:
        pytest.skip(str(backends._load_native()[1]))
    if backend == "triton":
        pytest.importorskip("triton")
    path = tmp_path / "updates.f32"
    data = np.random.default_rng(0).standard_normal((6, 300)).astype(np.float32)
    data.tofile(path)
    env = {**__import__("os").environ, "TRITON_INTERPRET": "1"}
    proc = subprocess.run(
        [sys.executable, "-c", READONLY_SCRIPT, str(path), backend],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr[-2000:]}"
    outcomes = proc.stdout.strip().splitlines()[-1].split(";")
    assert all(o.endswith("InvalidArgument") for o in outcomes), outcomes
    assert np.array_equal(np.fromfile(path, dtype=np.float32).reshape(6, 300), data)


def test_read_only_array_through_aggregate_is_never_written(backend: str) -> None:
    import numpy as np

    arr = np.random.default_rng(1).standard_normal((5, 40)).astype(np.float32) * 10
    arr.flags.writeable = False
    before = arr.copy()
    with pytest.raises(InvalidArgument, match="read-only"):
        be.aggregate(
            arr, rule="mean", pre=[("clip", {"max_norm": 1.0, "inplace": True})], backend=backend
        )
    out = be.aggregate(arr, rule="median", f=1, pre=[("clip", {"max_norm": 1.0})], backend=backend)
    assert out.shape == (40,)
    assert np.array_equal(arr, before)
