"""Test helpers: one place that says how far apart two results are, and where."""

from __future__ import annotations

import torch

# Tolerances written once. float32 sums reassociate across backends: a few ulps of the sum.
TOL = {torch.float32: (1e-5, 1e-6), torch.float16: (1e-5, 1e-6), torch.bfloat16: (1e-5, 1e-6)}


def mismatch(actual: torch.Tensor, expected: torch.Tensor, rtol: float, atol: float) -> str | None:
    """None if close, else a one-line report: how many differ, the worst index and values."""
    a = actual.detach().cpu().double().reshape(-1)
    e = expected.detach().cpu().double().reshape(-1)
    if a.shape != e.shape:
        return f"shape {tuple(actual.shape)} != expected {tuple(expected.shape)}"
    err = (a - e).abs()
    bad = err > atol + rtol * e.abs()
    if not bool(bad.any()):
        return None
    i = int(torch.argmax(torch.where(bad, err, torch.zeros_like(err))))
    return (
        f"{int(bad.sum())}/{a.numel()} differ; worst at {i}: got {a[i].item():.9g}, "
        f"expected {e[i].item():.9g} (|diff| {err[i].item():.3g}, rtol {rtol}, atol {atol})"
    )


def assert_close(
    actual: torch.Tensor, expected: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6
) -> None:
    report = mismatch(actual, expected, rtol, atol)
    assert report is None, report


def make_updates(n: int, d: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Random updates with distinct values per column (so order statistics have no ties)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float32)
    return x.to(dtype)


def skewed_columns(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """[n, 10 d] columns that make order-statistic searches work: sorted and reversed rows,
    ties (halves), sparse (75% zeros), heavy tails (log-normal), 10% Byzantine rows at 1e6, a
    constant, subnormals and large magnitudes, next to plain Gaussian columns."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)
    sparse = torch.where(torch.rand(n, d, generator=g) < 0.75, torch.zeros(()), x)
    byzantine = x.clone()
    byzantine[: max(1, n // 10)] = 1e6
    heavy = torch.sign(x) * torch.exp(3 * torch.randn(n, d, generator=g))
    parts = [
        x,
        x.sort(0).values,
        x.sort(0, descending=True).values,
        torch.round(x * 2) / 2,
        sparse,
        heavy,
        byzantine,
        torch.full((n, d), -2.5),
        x * 1e-40,
        x * 1e30,
    ]
    return torch.cat(parts, 1)


def ties(n: int, d: int, dtype: torch.dtype = torch.float32, seed: int = 0) -> torch.Tensor:
    """Small integers -3..3: every column holds repeated values, around any rank."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(-3, 4, (n, d), generator=g).to(dtype)


def pick(values: list[float], n: int, d: int, seed: int) -> torch.Tensor:
    """[n, d] float32 drawn from ``values`` (chosen to collide), reproducibly from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    return torch.tensor(values, dtype=torch.float32)[
        torch.randint(0, len(values), (n, d), generator=g)
    ]


def extreme_rows(n: int, d: int, seed: int = 0) -> torch.Tensor:
    """[n, d] float32 rows of every finite magnitude a float32 sum of squares or of values gets
    wrong: near the float32 maximum (3e38, where a sum of two overflows), 1e30 and 1e19 (where
    squares overflow), 1e-30 (where squares underflow), 1, cycling over the rows; each row a
    Gaussian of its scale (no ties)."""
    g = torch.Generator().manual_seed(seed)
    scales = torch.tensor([1e38, 1e30, 1e19, 1e-30, 1.0])[torch.arange(n) % 5]
    return torch.randn(n, d, generator=g).clamp(-3.0, 3.0) * scales[:, None]


def poisoned(x: torch.Tensor, row: int, value: float) -> torch.Tensor:
    """A copy of ``x`` with ``value`` (NaN or an infinity) at ``[row, d // 2]``."""
    y = x.clone()
    y[row, x.shape[1] // 2] = value
    return y


# ---- processes of a gloo group (the distributed tests) ------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the group's rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run_ranks(fn, world: int, args: tuple, timeout_s: float) -> list[int | None]:
    """Start ``fn(rank, world, port, *args)`` in ``world`` spawned processes on a fresh port and
    wait up to ``timeout_s`` in all; return their exit codes. A process still running then is
    killed (its code is then the kill's), so a hung rank fails the test instead of outliving it."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(
        fn, args=(world, free_port(), *args), nprocs=world, join=False, start_method="spawn"
    )
    deadline = time.monotonic() + timeout_s
    for p in ctx.processes:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in ctx.processes:
        if p.is_alive():
            p.kill()
            p.join()
    return [p.exitcode for p in ctx.processes]
