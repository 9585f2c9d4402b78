"""The sizes a benchmark may take: ``NxD`` lists parsed, and each size checked against the
memory free on its device before anything is allocated (``bcfl bench``, ``benchmarks/``)."""

from __future__ import annotations

import os

import torch

from .errors import InvalidArgument

# What one size needs at most, in float32 copies of the [n, d] updates: the updates, the fresh
# copy an in-place provider gets before each call, and a rule's working copy (the sort of a
# median or a trimmed mean); plus the [n, n] float64 Gram matrix of the distance rules.
WORKING_COPIES = 3


def parse_sizes(text: str) -> list[tuple[int, int]]:
    """``"NxD[,NxD...]"`` as ``[(n, d), ...]``; InvalidArgument naming the malformed part.

    Only the syntax is checked here; :func:`check_size` checks the values.
    """
    sizes = []
    for part in text.split(","):
        n, sep, d = part.strip().lower().partition("x")
        try:
            if not sep:
                raise ValueError
            sizes.append((int(n), int(d)))
        except ValueError:
            raise InvalidArgument(
                f"sizes must be NxD[,NxD...] with integer n and d (e.g. 64x1048576); "
                f"got {part.strip()!r} in {text!r}"
            ) from None
    return sizes


def available_bytes(device: str | torch.device) -> int | None:
    """Memory free for a new buffer on ``device`` (None where it cannot be told)."""
    if torch.device(device).type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0]) if torch.cuda.is_available() else None
    try:  # MemAvailable counts the page cache the kernel would give back; AVPHYS does not
        with open("/proc/meminfo", encoding="ascii") as fh:
            return next(int(ln.split()[1]) * 1024 for ln in fh if ln.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return None


def size_bytes(n: int, d: int) -> int:
    """The most memory one benchmark size takes (see ``WORKING_COPIES``)."""
    return WORKING_COPIES * n * d * 4 + 8 * n * n


def _positive(name: str, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise InvalidArgument(f"{name} must be an int >= 1; got {value!r}")
    return value


def check_size(n: object, d: object, device: str | torch.device = "cpu") -> None:
    """InvalidArgument unless ``n`` and ``d`` are ints >= 1 whose benchmark fits in the memory
    free on ``device`` now (and in host memory, where the updates are generated)."""
    rows, cols = _positive("n", n), _positive("d", d)
    need = size_bytes(rows, cols)
    try:
        torch.device(device)
    except (RuntimeError, TypeError):
        raise InvalidArgument(f"device must be cpu or cuda[:index]; got {device!r}") from None
    places = [(str(device), need, available_bytes(device))]
    if torch.device(device).type != "cpu":  # one copy generated on the host, then moved
        places.append(("the host", 4 * rows * cols, available_bytes("cpu")))
    for place, needed, free in places:
        if free is not None and needed > free:
            raise InvalidArgument(
                f"n={n} d={d} needs about {needed / 1e9:.3g} GB on {place} (the [n, d] float32 "
                f"updates, their working copies, an [n, n] Gram matrix); {free / 1e9:.3g} GB free"
            )
