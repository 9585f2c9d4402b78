"""Lean maps: the switch, the c0 rounding and the sum mod 2^b on every backend, bit for bit against
the Python-integer oracles; the lift and the unpacking against theirs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bcfl_engine.backends import _load_native
from bcfl_engine.errors import BackendUnavailable, InvalidArgument
from bcfl_engine.he import lean, lean_wire, wire

# A real 60-bit SEAL prime (the lean preset's q_0 is one like it) and a 30-bit one.
P60, P30 = 1152921504606830593, 1073692673

# (C, N, q0, b, k): the lean preset's (b = 42, k = 8), no rounding, b at its bound, a small prime.
CASES = [
    (1, 1024, P60, 42, 8),
    (3, 1024, P60, 42, 0),
    (2, 2048, P60, 50, 13),
    (1, 1024, P30, 20, 1),
]
IDS = [f"C{c}-N{n}-q{q.bit_length()}-b{b}-k{k}" for c, n, q, b, k in CASES]


def coefficients(c: int, n: int, q0: int, b: int, seed: int) -> torch.Tensor:
    """Uniform residues below q0, with the edge cases: 0, 1, q0 - 1, and the coefficients whose
    2^b c / q0 lies closest to a half-integer (where a float estimate is least sure)."""
    g = np.random.default_rng(seed)
    x = g.integers(0, q0, size=(c, 2, n), dtype=np.uint64).astype(np.int64)
    x[:, :, 0], x[:, :, 1], x[:, :, 2] = 0, 1, q0 - 1
    for j in range(40):
        y = int(g.integers(0, 2**b - 1))
        x[:, :, 3 + j] = (
            (2 * y + 1) * q0 >> (b + 1)
        ) + j % 2  # floor or ceil of (y + 1/2) q0 / 2^b
    return torch.from_numpy(x)


def report(got: np.ndarray, want: np.ndarray) -> str:
    bad = np.argwhere(got != want)
    if not len(bad):
        return ""
    i = tuple(bad[0])
    return f"{len(bad)} values differ; first at {list(i)}: got {got[i]}, want {want[i]}"


@pytest.mark.parametrize("c,n,q0,b,k", CASES, ids=IDS)
def test_switch_matches_reference(backend: str, c: int, n: int, q0: int, b: int, k: int) -> None:
    x = coefficients(c, n, q0, b, seed=n + b)
    # Ties of the c0 rounding, exactly: coefficients whose switch is y = t 2^k + 2^(k-1), odd
    # and even t (c = round(y q0 / 2^b) switches back to y: 2^b < q0).
    if k:
        for t in range(8):
            y = (t << k) | (1 << (k - 1))
            x[0, 0, 100 + t] = (y * q0 + 2 ** (b - 1)) >> b
    got = lean.switch(x, q0, b, k, backend=backend).numpy().view(np.uint64)
    want = lean.switch_reference(x.numpy(), q0, b, k)
    assert not report(got, want), report(got, want)
    assert int(want[:, 0].max()) < 2 ** (b - k) and int(want[:, 1].max()) < 2**b


def test_reference_rounds_ties_to_even() -> None:
    q0, b, k = P60, 42, 8
    ys = [
        5 * 256 + 128,
        6 * 256 + 128,
        7 * 256 + 127,
        7 * 256 + 129,
    ]  # tie odd, tie even, below, above
    x = np.zeros((1, 2, 8), dtype=np.uint64)
    x[0, 0, :4] = [(y * q0 + 2 ** (b - 1)) >> b for y in ys]
    out = lean.switch_reference(x, q0, b, k)
    assert out[0, 0, :4].tolist() == [6, 6, 7, 8]


def sum_inputs(n: int, shape: tuple[int, ...], b: int, seed: int) -> torch.Tensor:
    g = np.random.default_rng(seed)
    x = g.integers(0, 2**b, size=(n, *shape), dtype=np.uint64)
    x.reshape(n, -1)[:, :4] = 2**b - 1  # every carry at once
    return torch.from_numpy(x.astype(np.int64))


SUMS = [(1, (1, 2, 1024), 42), (7, (3, 2, 1024), 42), (13, (2, 2, 2048), 50), (5, (1, 2, 1024), 20)]


@pytest.mark.parametrize(
    "n,shape,b", SUMS, ids=[f"n{s[0]}-{'x'.join(map(str, s[1]))}-b{s[2]}" for s in SUMS]
)
@pytest.mark.parametrize("kind", ["sum", "small", "big"], ids=["sum", "w-small", "w-big"])
@pytest.mark.parametrize("with_acc", [False, True], ids=["fresh", "acc"])
def test_sum_matches_reference(
    backend: str, n: int, shape: tuple[int, ...], b: int, kind: str, with_acc: bool
) -> None:
    x = sum_inputs(n, shape, b, seed=n * b)
    acc = sum_inputs(1, shape, b, seed=5)[0] if with_acc else None
    w = {
        "sum": None,
        "small": [i % 4 + 1 for i in range(n)],
        "big": [2**63 - 3 * i for i in range(n)],
    }[kind]
    got = lean.lean_sum(x, b, w, acc=acc, backend=backend).numpy().view(np.uint64)
    want = lean.sum_reference(x.numpy(), b, w, None if acc is None else acc.numpy())
    assert not report(got, want), report(got, want)


@pytest.mark.parametrize("how", ["numpy", "native"])
def test_lift_matches_reference(how: str) -> None:
    if how == "native" and _load_native()[0] is None:
        pytest.skip(str(_load_native()[1]))
    for q0, b in ((P60, 42), (P60, 50), (P30, 20)):
        x = np.random.default_rng(b).integers(0, 2**b, size=(2, 2, 1024), dtype=np.uint64)
        x[0, 0, :3] = [0, 1, 2**b - 1]
        x[0, 1, :3] = [2 ** (b - 1) - 1, 2 ** (b - 1), 2 ** (b - 1) + 1]  # the tie: q0 / 2
        got, want = lean.lift(x, q0, b, backend=how), lean.lift_reference(x, q0, b)
        assert not report(got, want), report(got, want)
        assert int(got.max()) < q0


# The preset widths (lean: 42/8; lean16: 58/26, a value spanning 9 bytes), the widths around
# the unpacker's limits (57: 8 bytes with a shift of 7; 59: the ninth byte), the smallest rows (1
# bit) and a ring of 8192 (several accumulator tiles per row in lean_accumulate).
PACKS = [
    (42, 8, 1024), (42, 0, 1024), (50, 13, 1024), (20, 1, 1024), (58, 26, 1024), (59, 0, 1024),
    (57, 1, 1024), (1, 0, 1024), (9, 8, 1024), (33, 0, 1024), (42, 8, 8192), (58, 26, 8192),
]  # fmt: skip


@pytest.mark.parametrize("b,k,n", PACKS, ids=[f"b{b}-k{k}-N{n}" for b, k, n in PACKS])
def test_pack_and_unpack_round_trip(b: int, k: int, n: int) -> None:
    c = 3
    vals = np.random.default_rng(b + k).integers(0, 2 ** (b - k), size=(c, 2, n), dtype=np.uint64)
    vals[:, 1] = np.random.default_rng(1).integers(0, 2**b, size=(c, n), dtype=np.uint64)
    vals[:, :, -1] = [2 ** (b - k) - 1, 2**b - 1]  # the last value of every row: all ones
    layout = lean_wire.LeanLayout(
        n, P60, (1, 2, 3, 4), 2.0**30, b, k, wire.chunk_sizes(c * n, n // 2, True), c * n, True,
        1.0, 1,
    )  # fmt: skip
    blob = lean_wire.write(vals, layout)
    assert len(blob) == lean_wire.HEADER.size + c * n * (2 * b - k) // 8
    want = vals.copy()
    want[:, 0] <<= np.uint64(k)
    got = lean_wire.parse(blob, layout)
    assert not report(got, want), report(got, want)
    with pytest.MonkeyPatch.context() as mp:  # the numpy unpacker (no extension) reads the same
        mp.setattr(lean_wire, "_load_native", lambda: (None, "not built"))
        got_py = lean_wire.parse(blob, layout)
    assert not report(got_py, want), report(got_py, want)
    if _load_native()[0] is not None:  # the fused native accumulate reads the same values
        from bcfl_engine.backends import native

        acc = torch.full((c, 2, n), -1, dtype=torch.int64)  # garbage: fresh zeroes it
        other = vals.copy()
        other[:, 0] = np.random.default_rng(2).integers(
            0, 2 ** (b - k), size=(c, n), dtype=np.uint64
        )
        blob2, want2 = lean_wire.write(other, layout), other.copy()
        want2[:, 0] <<= np.uint64(k)
        # 11 clients: a block of 8 unpacked together, then 3 one at a time; a weight past 32 bits
        # (the full 64-bit product)
        ws = [1, 2, 2**62 + 3, 5, 0, 7, 2**40, 9, 3, 2**63 - 1, 4]
        blobs = [blob, blob2] * 5 + [blob]
        native().lean_accumulate(blobs, lean_wire.HEADER.size, b, k, torch.tensor(ws), acc, True)
        want3 = lean.sum_reference(np.stack([want, want2] * 5 + [want]), b, ws)
        assert not report(acc.numpy().view(np.uint64), want3), report(
            acc.numpy().view(np.uint64), want3
        )
        native().lean_accumulate([blob, blob2] * 5, lean_wire.HEADER.size, b, k, None, acc, False)
        want4 = lean.sum_reference(np.stack([want3] + [want, want2] * 5), b)
        assert not report(acc.numpy().view(np.uint64), want4)


def test_switch_of_any_length(backend: str) -> None:
    """N not a power of two: torch and C++ take it, Triton says why not (forced)."""
    x = coefficients(2, 1024, P60, 42, seed=3)[:, :, :100].contiguous()
    if backend == "triton":
        with pytest.raises(BackendUnavailable, match="power of two"):
            lean.switch(x, P60, 42, 8, backend=backend)
        return
    got = lean.switch(x, P60, 42, 8, backend=backend).numpy().view(np.uint64)
    want = lean.switch_reference(x.numpy(), P60, 42, 8)
    assert not report(got, want), report(got, want)


def test_bad_arguments_are_refused() -> None:
    x = torch.zeros((1, 2, 1024), dtype=torch.int64)
    with pytest.raises(InvalidArgument, match="b <= 59"):
        lean.switch(x, P60, 60, 0)  # b = 51..59: the torch kernel (test_multiparty_presets)
    with pytest.raises(InvalidArgument, match="q_0"):
        lean.switch(x, 2**43, 42, 0)
    with pytest.raises(InvalidArgument, match=r"\[0, q_0\)"):
        lean.switch(x + P30, P30, 20, 0)
    with pytest.raises(InvalidArgument, match="weights"):
        lean.lean_sum(x[None], 42, [1, 2])


@pytest.mark.parametrize("b,n", [(42, 1024), (58, 8192), (20, 2048)], ids=["b42", "b58", "b20"])
def test_finish_is_the_lift_then_the_ntt(b: int, n: int) -> None:
    """The native one-pass lift and NTT (an aggregate's last step) equal numpy's two steps."""
    if _load_native()[0] is None:
        pytest.skip(str(_load_native()[1]))
    from bcfl_engine.backends import native
    from bcfl_engine.he.ntt import ntt, tables

    x = np.random.default_rng(b).integers(0, 2**b, size=(3, 2, n), dtype=np.uint64)
    x[0, 0, :3] = [0, 2**b - 1, 2 ** (b - 1)]
    want = ntt(lean.lift(x, P60, b, backend="numpy"), P60, backend="numpy")
    out = torch.full((3, 2, n), -1, dtype=torch.int64)
    tb = tables(n, P60)
    native().lean_finish(
        torch.from_numpy(x.view(np.int64)), P60, b, torch.from_numpy(tb.fwd),
        torch.from_numpy(tb.fwd_p), out,
    )  # fmt: skip
    got = out.numpy().view(np.uint64)
    assert not report(got, want), report(got, want)
    with pytest.raises(InvalidArgument, match="1 mod 2N"):
        native().lean_finish(
            torch.from_numpy(x.view(np.int64)), P60 + 2, b, torch.from_numpy(tb.fwd),
            torch.from_numpy(tb.fwd_p), out,
        )  # fmt: skip
