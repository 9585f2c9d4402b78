"""Which backends exist on this machine, and which one runs an op.

Every op has up to three kernels:

- ``torch``: the pure-torch reference. Runs anywhere; the fallback and the oracle of every test.
- ``native``: the CPU fast path, C++/OpenMP in the extension ``bcfl_engine._C`` or numba in
  ``bcfl_engine.kernels`` (one of the two per op, whichever measures faster).
- ``triton``: the GPU fast path. Runs CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``
  when forced (the interpreter is for tests, never an automatic choice).

:func:`choose` walks :data:`PRIORITY` and takes the first kernel that can run the call. A forced
backend (``backend=`` on the call, else ``BCFL_BACKEND`` in the environment) that cannot run
raises :class:`~bcfl_engine.errors.BackendUnavailable` with its reasons. This module is the only
place that imports the native extension.
"""

from __future__ import annotations

import enum
import functools
import importlib
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

import torch

from .errors import BackendUnavailable, InvalidArgument

BACKENDS = ("torch", "native", "triton")
PRIORITY = ("triton", "native", "torch")


@dataclass(frozen=True)
class Kernel:
    """One implementation of an op.

    Attributes
    ----------
    backend : "torch" | "native" | "triton"
    fn : the implementation; same arguments as the op after validation
    needs : for a native kernel, the library it runs on: "cpp" (``bcfl_engine._C``) or "numba"
    limits : optional ``limits(x) -> reason | None``: why this kernel cannot take input ``x``
    """

    backend: str
    fn: Callable[..., Any]
    needs: str = ""
    limits: Callable[[torch.Tensor], str | None] | None = None


@functools.cache
def _load_native() -> tuple[ModuleType | None, str | None]:
    try:
        return importlib.import_module("bcfl_engine._C"), None
    except ImportError as exc:
        return None, f"extension bcfl_engine._C not built ({exc}); reinstall with BCFL_BUILD_EXT=1"


def native() -> ModuleType:
    """The C++ extension ``bcfl_engine._C``; raises BackendUnavailable if it was not built."""
    mod, reason = _load_native()
    if mod is None:
        raise BackendUnavailable(str(reason))
    return mod


@functools.cache
def _module_reason(name: str, extra: str) -> str | None:
    try:
        importlib.import_module(name)
    except ImportError as exc:
        return f"{name} not importable ({exc}); pip install 'bcfl_engine[{extra}]'"
    return None


class ZstdPath(enum.Enum):
    """Who decodes zstd-compressed SEAL bodies (TenSEAL's default compression) here."""

    HEADERS = "native, built against the zstd headers and linked"
    RUNTIME = "native, libzstd loaded at run time without headers"
    PYTHON = "Python codec (zstandard)"
    NONE = "none"


@functools.cache
def zstd_path() -> tuple[ZstdPath, str]:
    """The zstd path in use and its detail (the library's path, or why the others are out).

    The extension decodes zstd itself when it was built against ``zstd.h`` or found
    ``libzstd.so.1`` at run time; otherwise the Python layer decompresses zstd bodies with
    ``zstandard`` (the ``he`` extra) before the native codec sees them; with neither, zstd
    payloads are rejected with a :class:`~bcfl_engine.errors.PayloadError`.
    """
    mod, reason = _load_native()
    if mod is not None:
        source, detail = mod.zstd_info()
        if source == 1:
            return ZstdPath.HEADERS, ""
        if source == 2:
            return ZstdPath.RUNTIME, detail
        reason = f"the extension has no zstd: {detail}"
    missing = _module_reason("zstandard", "he")
    if missing is None:
        return ZstdPath.PYTHON, f"{reason}; zstd bodies are decompressed in Python"
    return ZstdPath.NONE, f"{reason}; {missing}: zstd-compressed TenSEAL payloads are rejected"


def native_zstd() -> bool:
    """Whether the extension decodes zstd bodies itself (else :func:`zstd_path` says who)."""
    return zstd_path()[0] in (ZstdPath.HEADERS, ZstdPath.RUNTIME)


def zstd_line() -> str:
    """One line for ``bcfl info``: the zstd path and its detail."""
    path, detail = zstd_path()
    return f"zstd: {path.value}" + (f": {detail}" if detail else "")


def interpret_mode() -> bool:
    """True when Triton kernels run in the CPU interpreter (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def library_reasons() -> dict[str, str | None]:
    """Whether each backend's library loads here: name -> None (available) or the reason not."""
    cpp = _load_native()[1]
    numba = _module_reason("numba", "numba")
    triton = _module_reason("triton", "triton")
    if triton is None and not torch.cuda.is_available() and not interpret_mode():
        triton = "no CUDA device (TRITON_INTERPRET=1 runs kernels on the CPU, for tests)"
    return {"torch": None, "native (C++)": cpp, "native (numba)": numba, "triton": triton}


def why_not(kernel: Kernel, x: torch.Tensor, forced: bool) -> str | None:
    """The reason ``kernel`` cannot run on ``x``, or None if it can."""
    if kernel.backend == "native":
        if x.device.type != "cpu":
            return f"native kernels run CPU tensors; got a tensor on {x.device}"
        if kernel.needs == "cpp":
            reason = _load_native()[1]
        elif kernel.needs == "numba":
            reason = _module_reason("numba", "numba")
        else:
            reason = None
        if reason:
            return reason
    elif kernel.backend == "triton":
        reason = _module_reason("triton", "triton")
        if reason:
            return reason
        if x.device.type != "cuda":
            if not interpret_mode():
                return f"Triton needs a CUDA tensor; got one on {x.device} (no TRITON_INTERPRET=1)"
            if not forced:
                return "CPU tensor: the Triton interpreter runs only when forced (backend='triton')"
    elif kernel.backend != "torch":
        return f"unknown backend {kernel.backend!r}"
    if kernel.limits is not None:
        return kernel.limits(x)
    return None


def requested(backend: str | None) -> str | None:
    """The forced backend: ``backend`` if given, else ``BCFL_BACKEND``, else None (automatic)."""
    name = backend if backend is not None else (os.environ.get("BCFL_BACKEND") or None)
    if name is not None and name not in BACKENDS:
        raise InvalidArgument(f"backend must be one of {BACKENDS} or None; got {name!r}")
    return name


def choose(
    op: str, kernels: Sequence[Kernel], x: torch.Tensor, backend: str | None = None
) -> Kernel:
    """Pick the kernel of ``op`` that runs ``x``.

    Forced (``backend`` or ``BCFL_BACKEND``): that kernel or BackendUnavailable with the reason.
    Automatic: the first of :data:`PRIORITY` that can run, the torch reference last.
    """
    by_name = {k.backend: k for k in kernels}
    forced = requested(backend)
    if forced is not None:
        kernel = by_name.get(forced)
        if kernel is None:
            raise BackendUnavailable(f"{op}: no {forced!r} kernel (has {sorted(by_name)})")
        reason = why_not(kernel, x, forced=True)
        if reason:
            raise BackendUnavailable(f"{op}: backend {forced!r} cannot run this call: {reason}")
        return kernel
    for name in PRIORITY:
        kernel = by_name.get(name)
        if kernel is not None and why_not(kernel, x, forced=False) is None:
            return kernel
    raise BackendUnavailable(f"{op}: no kernel can run this call")  # torch always can


def dispatch(
    op: str, kernels: Sequence[Kernel], x: torch.Tensor, backend: str | None, *args: Any, **kw: Any
) -> Any:
    """``choose`` then call: ``kernel.fn(x, *args, **kw)``."""
    return choose(op, kernels, x, backend).fn(x, *args, **kw)
