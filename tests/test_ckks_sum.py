"""ckks_sum: every backend against the torch reference, the reference against Python integers."""

from __future__ import annotations

import random

import pytest
import torch

from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he.ckks_sum import ckks_sum, ckks_sum_reference

# Real SEAL primes: those of the default preset (60, 40, 40 bits) and the 30-bit one of "test".
P60, P40, P40B, P30 = 1152921504606830593, 1099510890497, 1099511480321, 1073692673

# (n, C, K, N, primes): prime n, one client, K = 1..3, N at SEAL's smallest degree.
SHAPES = [
    (1, 1, 1, 1024, [P30]),
    (3, 2, 2, 1024, [P60, P40]),
    (7, 1, 3, 2048, [P60, P40, P40B]),
]


def residues(n: int, c: int, primes: list[int], N: int, seed: int) -> torch.Tensor:
    """Uniform residues below each prime, plus the extremes 0 and q - 1 (the carries' worst case)."""
    g = torch.Generator().manual_seed(seed)
    q = torch.tensor(primes)[:, None]
    x = torch.randint(0, 2**62, (n, c, 2, len(primes), N), generator=g) % q
    x[..., 0] = 0
    x[..., 1:8] = q - 1
    return x.contiguous()


def weights_for(kind: str, n: int) -> list[int] | None:
    if kind == "sum":
        return None
    if kind == "small":
        return [i % 4 for i in range(1, n + 1)]
    return [2**59 + 11 * i for i in range(n)]  # near the primes: every Shoup product is large


@pytest.mark.parametrize(
    "n,c,k,N,primes", SHAPES, ids=[f"n{s[0]}-C{s[1]}-K{s[2]}-N{s[3]}" for s in SHAPES]
)
@pytest.mark.parametrize("kind", ["sum", "small", "big"], ids=["sum", "w-small", "w-big"])
@pytest.mark.parametrize("with_acc", [False, True], ids=["fresh", "acc"])
def test_ckks_sum_matches_reference(
    backend: str, n: int, c: int, k: int, N: int, primes: list[int], kind: str, with_acc: bool
) -> None:
    x = residues(n, c, primes, N, seed=n * N + k)
    acc = residues(1, c, primes, N, seed=7)[0] if with_acc else None
    w = weights_for(kind, n)
    got = ckks_sum(x, primes, w, acc=acc, backend=backend)
    want = ckks_sum_reference(x, primes, w, acc)
    assert got.dtype == torch.int64 and got.shape == x.shape[1:]
    diff = (got != want).nonzero()
    assert diff.numel() == 0, f"{diff.shape[0]} residues differ; first at {diff[0].tolist()}"


def test_reference_is_the_integer_weighted_sum() -> None:
    primes = [P60, P40]
    x = residues(4, 1, primes, 1024, seed=3)
    w = [3, 0, 2**59 + 1, 1]
    acc = residues(1, 1, primes, 1024, seed=4)[0]
    got = ckks_sum_reference(x, primes, w, acc)
    rng = random.Random(0)
    for _ in range(200):
        p, kk, j = rng.randrange(2), rng.randrange(2), rng.randrange(1024)
        want = (
            int(acc[0, p, kk, j]) + sum(w[i] * int(x[i, 0, p, kk, j]) for i in range(4))
        ) % primes[kk]
        assert int(got[0, p, kk, j]) == want, (p, kk, j)


def test_ckks_sum_rejects_bad_input() -> None:
    x = residues(2, 1, [P30], 1024, seed=0)
    with pytest.raises(InvalidArgument, match="int64 tensor"):
        ckks_sum(x.float(), [P30])
    with pytest.raises(InvalidArgument, match="K=1 primes"):
        ckks_sum(x, [P30, P40])
    with pytest.raises(InvalidArgument, match="non-negative integers"):
        ckks_sum(x, [P30], [1, -1])
    with pytest.raises(InvalidArgument, match="acc must be"):
        ckks_sum(x, [P30], acc=torch.zeros(3, dtype=torch.int64))
