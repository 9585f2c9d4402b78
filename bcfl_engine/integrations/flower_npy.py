"""The .npy bytes Flower carries arrays in, read without a copy and written with one.

Flower's ``Array.data`` and the legacy ``Parameters.tensors`` hold each array as a .npy file
(``np.save``): a magic string, a version, a header length, a dict literal naming ``descr``,
``fortran_order`` and ``shape``, then the raw C-order bytes. ``np.load`` copies those bytes
into a fresh array; :func:`npy_view` parses the header itself and returns a read-only view
over the bytes after it, and falls back to ``np.load`` for anything unusual (an object or
structured dtype, Fortran order, an unknown version).

:class:`StackPool` keeps the matrices a round stacks its replies into, one pair per
``(n, d32, d64)``, touched once at allocation so a round copies into warm pages.
"""

from __future__ import annotations

import ast
import functools
import io
import math
import struct

import numpy as np

MAGIC = b"\x93NUMPY"
_ALIGN = 64  # numpy pads the header so the data starts on a 64-byte boundary


def parse_npy_header(data: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, data offset)`` of a plain C-order .npy, or None where the header is
    anything else (object or structured dtype, Fortran order, unknown version, malformed)."""
    got = _parse(data)
    return None if got is None else got[:3]


def _parse(data: bytes | memoryview) -> tuple[np.dtype, tuple[int, ...], int, int] | None:
    """:func:`parse_npy_header` plus the element count; the header is looked up whole in a
    cache (a round's replies repeat the same few headers), so a known one costs a slice."""
    if not isinstance(data, bytes):
        data = memoryview(data).cast("B")
    size = len(data)
    if size < 10:
        return None
    major = data[6]
    if major == 1:
        end = 10 + (data[8] | data[9] << 8)
    elif major in (2, 3) and size >= 12:
        end = 12 + (data[8] | data[9] << 8 | data[10] << 16 | data[11] << 24)
    else:
        return None
    if size < end:
        return None
    got = _header(bytes(data[:end]))
    if got is None:
        return None
    dtype, shape, count = got
    if size - end != count * dtype.itemsize:
        return None
    return dtype, shape, end, count


@functools.lru_cache(maxsize=256)
def _header(head: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, element count)`` of a whole .npy header (magic to padding), else None."""
    if head[:6] != MAGIC:
        return None
    return _header_fields(head[10 if head[6] == 1 else 12 :])


@functools.lru_cache(maxsize=256)
def _header_fields(text: bytes) -> tuple[np.dtype, tuple[int, ...], int] | None:
    """``(dtype, shape, element count)`` of a plain header's dict literal, else None; cached,
    as a round's replies repeat the same few headers."""
    try:
        header = ast.literal_eval(text.decode("latin1"))
    except (ValueError, SyntaxError, UnicodeDecodeError, MemoryError, RecursionError):
        return None
    if not isinstance(header, dict) or set(header) != {"descr", "fortran_order", "shape"}:
        return None
    if header["fortran_order"] is not False:
        return None
    descr, shape = header.get("descr"), header.get("shape")
    if not isinstance(descr, str) or not isinstance(shape, tuple):
        return None
    if not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        return None
    try:
        dtype = np.dtype(descr)
    except TypeError:
        return None
    if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None:
        return None
    if dtype.itemsize == 0:
        return None
    return dtype, shape, math.prod(shape)


def npy_view(data: bytes | memoryview) -> np.ndarray:
    """The array in .npy ``data``: a read-only view over the bytes where the header is plain
    (:func:`parse_npy_header`), else ``np.load``'s copy (never unpickling)."""
    got = _parse(data)
    if got is None:
        return np.load(io.BytesIO(bytes(data)), allow_pickle=False)
    dtype, shape, offset, count = got
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(shape)


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """A version 1.0 .npy header for a C-order array of ``dtype`` and ``shape``."""
    dims = repr(tuple(int(s) for s in shape))
    text = f"{{'descr': {dtype.str!r}, 'fortran_order': False, 'shape': {dims}, }}"
    raw = text.encode("latin1")
    pad = -(len(MAGIC) + 4 + len(raw) + 1) % _ALIGN
    raw += b" " * pad + b"\n"
    return MAGIC + b"\x01\x00" + struct.pack("<H", len(raw)) + raw


def npy_bytes(a: np.ndarray) -> bytes:
    """``a`` as .npy bytes that ``np.load`` reads back; one copy of the data (none extra for
    a C-contiguous array)."""
    if a.dtype.hasobject or a.dtype.fields is not None:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=False)
        return buf.getvalue()
    a = a if a.flags.c_contiguous else a.copy(order="C")
    return npy_header(a.dtype, tuple(a.shape)) + a.reshape(-1).view(np.uint8).data


class StackPool:
    """Reused, pre-faulted matrices to stack ``n`` replies in: float32 ``[n, d32]`` and float64
    ``[n, d64]`` per ``(n, d32, d64)``. A round's stack lives until the next round asks for
    the same key; results must never be views of it (:meth:`Stack.unstack` copies)."""

    def __init__(self, max_keys: int = 4) -> None:
        self.max_keys = max_keys
        self._buffers: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def get(self, n: int, d32: int, d64: int) -> tuple[np.ndarray, np.ndarray]:
        """The matrices for ``(n, d32, d64)``, allocated and touched on first use."""
        key = (n, d32, d64)
        got = self._buffers.pop(key, None)
        if got is None:
            got = (np.zeros((n, d32), np.float32), np.zeros((n, d64), np.float64))
            got[0].fill(0)  # touch every page now, not during a round's copy
            got[1].fill(0)
            while len(self._buffers) >= self.max_keys:
                self._buffers.pop(next(iter(self._buffers)))
        self._buffers[key] = got  # most recently used last
        return got

    def __len__(self) -> int:
        return len(self._buffers)


def tensors_to_arrays(tensors: list[bytes]) -> list[np.ndarray]:
    """The arrays in a legacy ``Parameters.tensors`` list (.npy bytes each), as views where
    plain (:func:`npy_view`)."""
    return [npy_view(t) for t in tensors]


def arrays_to_tensors(arrays: list[np.ndarray]) -> list[bytes]:
    """Arrays as a legacy ``Parameters.tensors`` list, each serialized once."""
    return [npy_bytes(np.asarray(a)) for a in arrays]
