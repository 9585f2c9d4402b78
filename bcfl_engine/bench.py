"""Timing helpers shared by ``benchmarks/robust.py`` and ``bcfl bench``.

Every time is the median of ``repeats`` calls after one warm-up call (which compiles, faults
pages in and fills caches), with the device synchronized around each call. Results are reported
against the machine's own ceiling, measured on the same buffer in the same run:

- the memory-read floor: torch ``x.sum()`` over the ``[n, d]`` updates, the least time any rule
  that reads every byte of ``x`` can take;
- GB/s: bytes of ``x`` / time; "of floor": floor time / time (1.0 is memory speed);
- on CUDA also the device-to-device copy bandwidth (bytes read + written / time of
  ``y.copy_(x)``), the usual figure for what the memory bus gives.

The engine's rules run with ``check=False``: as after :meth:`UpdateBatch.add`, which already
rejected non-finite updates.
"""

from __future__ import annotations

import inspect
import math
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch

from . import rules as _rules
from .backends import choose, requested
from .bench_sizes import check_size

# Sizes of ``bcfl bench``: one shape like a mid-size model (64 clients, 1M parameters), and a
# smoke run.
FULL_SIZE = (64, 1 << 20)
QUICK_SIZE = (16, 4099)

# Iterative rules run a fixed number of steps, so that every provider does the same work.
GM_ITERS = 10
CC_ITERS = 3

# A rule timed faster than the memory-read floor (above 1.0 of it) read its input faster than
# memory allows: noise in one of the two timings. Both are timed again, at most this many times.
MAX_RETIMES = 3


def sync_for(device: torch.device | str) -> Callable[[], None]:
    """A function that waits for ``device`` to finish its queued work (no-op on the CPU)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return lambda: torch.cuda.synchronize(dev)
    return lambda: None


def time_call(
    fn: Callable[..., Any],
    *,
    repeats: int = 5,
    setup: Callable[[], Any] | None = None,
    sync: Callable[[], None] = lambda: None,
    budget_s: float | None = None,
) -> list[float]:
    """Seconds of each timed call of ``fn`` after one untimed warm-up.

    ``setup``, if given, runs untimed before every call and its result is passed to ``fn``
    (e.g. a fresh copy for a provider that works in place). With ``budget_s``, a provider whose
    warm-up took ``t`` gets at most ``budget_s / t`` timed calls (at least one).
    """

    def once() -> float:
        arg = setup() if setup is not None else None
        sync()
        t0 = time.perf_counter()
        fn(arg) if setup is not None else fn()
        sync()
        return time.perf_counter() - t0

    warm = once()
    runs = repeats
    if budget_s is not None and warm > 0:
        runs = max(1, min(repeats, int(budget_s / warm)))
    return [once() for _ in range(runs)]


def median(xs: Sequence[float]) -> float:
    s = sorted(xs)
    k = len(s) // 2
    return s[k] if len(s) % 2 else (s[k - 1] + s[k]) / 2


def read_floor_s(x: torch.Tensor, repeats: int = 5) -> float:
    """Median seconds of torch ``x.sum()``: the memory-read floor of a pass over ``x``."""
    return median(time_call(lambda: x.sum(), repeats=repeats, sync=sync_for(x.device)))


def copy_gbps(x: torch.Tensor, repeats: int = 5) -> float:
    """Device-to-device copy bandwidth over ``x``'s size: (bytes read + written) / time."""
    y = torch.empty_like(x)
    t = median(time_call(lambda: y.copy_(x), repeats=repeats, sync=sync_for(x.device)))
    return 2 * x.numel() * x.element_size() / t / 1e9


def gbps(nbytes: int, seconds: float) -> float:
    return nbytes / seconds / 1e9 if seconds > 0 else math.inf


def make_updates(n: int, d: int, device: str | torch.device = "cpu", seed: int = 0) -> torch.Tensor:
    """``[n, d]`` float32 standard-normal updates (generated on the CPU, then moved)."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, d, generator=g).to(device)


def rule_params(name: str, n: int, d: int) -> dict[str, Any]:
    """The parameters every provider of rule ``name`` gets at size ``[n, d]``.

    ``f = max(1, n // 10)`` (0 for the mean) satisfies every rule's bound down to n = 7 (Bulyan:
    n >= 4f + 3); Multi-Krum averages ``m = n - f``; the clipping radii are ``sqrt(d)``, the
    typical norm of a standard-normal row, so about half the rows are clipped.
    """
    f = 0 if name == "mean" else max(1, n // 10)
    return {
        "f": f,
        "m": n - f,
        "max_iter": GM_ITERS,
        "tol": 0.0,
        "eps": 1e-6,
        "tau": math.sqrt(d),
        "n_iter": CC_ITERS,
        "max_norm": math.sqrt(d),
    }


def engine_call(
    name: str, x: torch.Tensor, backend: str | None
) -> tuple[Callable[..., Any], str, Callable[[], Any] | None]:
    """``(call, backend name, setup)`` running the engine's rule ``name`` on ``x``.

    ``clip`` runs in place, as ByzFL's Clipping does, on a fresh copy of ``x`` that ``setup``
    makes untimed before each call (then ``call`` takes that copy).
    Raises ImportError or AttributeError when the rule is not in this build, and
    :class:`~bcfl_engine.errors.BackendUnavailable` when ``backend`` cannot run it here.
    """
    info = _rules.get(name)
    fn = info.fn
    params = rule_params(name, x.shape[0], x.shape[1])
    accepted = inspect.signature(fn).parameters
    kw = {k: v for k, v in params.items() if k in accepted}
    kernel = choose(name, info.kernels, x, backend)
    if "inplace" in accepted:
        return (
            (lambda v: fn(v, backend=kernel.backend, check=False, inplace=True, **kw)),
            kernel.backend,
            x.clone,
        )
    return (lambda: fn(x, backend=kernel.backend, check=False, **kw)), kernel.backend, None


def result_row(
    rule: str,
    provider: str,
    x: torch.Tensor,
    floor_s: float,
    times: Sequence[float] | None = None,
    status: str = "ok",
    note: str = "",
) -> dict[str, Any]:
    """One row of a benchmark table (JSON-serializable)."""
    n, d = x.shape
    row: dict[str, Any] = {
        "rule": rule,
        "provider": provider,
        "n": n,
        "d": d,
        "device": x.device.type,
        "status": status,
        "seconds": None,
        "gbps": None,
        "floor_fraction": None,
        "runs": 0,
        "note": note,
    }
    if times:
        t = median(times)
        row.update(
            seconds=t,
            gbps=gbps(x.numel() * x.element_size(), t),
            floor_fraction=floor_s / t,
            runs=len(times),
        )
    return row


def bench_engine(
    name: str,
    x: torch.Tensor,
    backend: str | None,
    floor_s: float,
    *,
    repeats: int = 5,
    budget_s: float | None = None,
) -> dict[str, Any]:
    """Time the engine's rule ``name`` on ``x``; a row whose status says why if it cannot."""
    from .errors import BackendUnavailable

    try:
        call, used, setup = engine_call(name, x, backend)
    except (ImportError, AttributeError) as exc:
        return result_row(
            name, f"bcfl[{backend or 'auto'}]", x, floor_s, None, "not available", str(exc)
        )
    except BackendUnavailable as exc:
        return result_row(name, f"bcfl[{backend}]", x, floor_s, None, "unavailable", str(exc))
    try:
        times = time_call(
            call, repeats=repeats, setup=setup, sync=sync_for(x.device), budget_s=budget_s
        )
    except Exception as exc:  # a failing rule is a result of the run, not a crash
        return result_row(
            name, f"bcfl[{used}]", x, floor_s, None, "error", f"{type(exc).__name__}: {exc}"
        )
    return result_row(name, f"bcfl[{used}]", x, floor_s, times)


def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and not math.isfinite(value):
        return "inf"
    return format(value, spec) if spec else str(value)


def format_table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str, str]]) -> str:
    """Rows as an aligned text table; ``columns`` are ``(key, header, format spec)``."""
    cells = [[header for _, header, _ in columns]]
    cells += [[_fmt(r.get(key), spec) for key, _, spec in columns] for r in rows]
    widths = [max(len(c[i]) for c in cells) for i in range(len(columns))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


ENGINE_COLUMNS = (
    ("rule", "rule", ""),
    ("provider", "provider", ""),
    ("seconds", "ms", ""),
    ("gbps", "GB/s", ".2f"),
    ("floor_fraction", "of floor", ".2f"),
    ("runs", "runs", ""),
    ("status", "status", ""),
)


def as_ms(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with ``seconds`` shown as milliseconds (for printing only)."""
    return [
        {**r, "seconds": None if r["seconds"] is None else f"{r['seconds'] * 1e3:.2f}"}
        for r in rows
    ]


def _impossible(row: dict[str, Any]) -> bool:
    return row["floor_fraction"] is not None and row["floor_fraction"] > 1.0


def run_engine_bench(
    rules: Sequence[str] | None = None,
    n: int | None = None,
    d: int | None = None,
    backend: str | None = None,
    repeats: int = 5,
    device: str = "cpu",
    *,
    quick: bool = False,
    echo: bool = True,
    budget_s: float = 60.0,
) -> list[dict[str, Any]]:
    """Time the engine's own rules (no peers) at ``[n, d]`` on ``device``; one row per rule.

    Sizes default to ``FULL_SIZE`` (``QUICK_SIZE`` with ``quick``); ``backend`` None is the
    automatic choice. Prints the table and the floor unless ``echo`` is False. A size that is
    not positive or does not fit in free memory raises InvalidArgument before any allocation.

    A rule timed above 1.0 of the floor (faster than reading its input) is noise: a warning,
    then the floor and the rule are timed again, up to ``MAX_RETIMES`` times. The floor kept is
    the lowest measured (noise only adds time), and every row's fraction is taken against it.
    A figure still above 1.0 is reported with a note saying it is unreliable.
    """
    requested(backend)  # validate the name before allocating anything
    n0, d0 = QUICK_SIZE if quick else FULL_SIZE
    n, d = n0 if n is None else n, d0 if d is None else d
    check_size(n, d, device)
    names = list(rules) if rules else list(_rules.RULES)
    x = make_updates(n, d, device)
    floor = read_floor_s(x, repeats)
    rows = []
    for name in names:
        row = bench_engine(name, x, backend, floor, repeats=repeats, budget_s=budget_s)
        retimes = 0
        while _impossible(row) and retimes < MAX_RETIMES:
            retimes += 1
            if echo:
                print(
                    f"warning: {name} timed at {row['floor_fraction']:.2f} of the memory-read "
                    "floor, faster than reading its input: timing noise; timing the floor and "
                    f"{name} again ({retimes}/{MAX_RETIMES})",
                    file=sys.stderr,
                )
            floor = min(floor, read_floor_s(x, repeats))
            row = bench_engine(name, x, backend, floor, repeats=repeats, budget_s=budget_s)
        if retimes:
            row["retimes"] = retimes
            row["note"] = (
                f"still above the floor after {retimes} retimes: unreliable"
                if _impossible(row)
                else f"retimed {retimes}x after a figure above the floor"
            )
        rows.append(row)
    for row in rows:  # one floor for the whole table: the lowest measured
        if row["seconds"]:
            row["floor_fraction"] = floor / row["seconds"]
    if echo:
        nbytes = x.numel() * x.element_size()
        print(
            f"n={n} d={d} float32 on {x.device}: {nbytes / 1e6:.1f} MB; memory-read floor ", end=""
        )
        print(f"(torch x.sum()) {floor * 1e3:.2f} ms = {gbps(nbytes, floor):.2f} GB/s")
        print(format_table(as_ms(rows), ENGINE_COLUMNS))
        for r in rows:
            if r["status"] != "ok" or r.get("retimes"):
                print(f"  {r['rule']}: {r['status']}: {r['note']}")
    return rows
