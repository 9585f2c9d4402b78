"""dp: the clipped mean on every backend against the torch reference, the noise's distribution,
its source, and the rules and options dp= refuses."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import assert_close, extreme_rows, make_updates, poisoned

import bcfl_engine as be
from bcfl_engine import dp as bdp
from bcfl_engine.dp_kernels import cm_native
from bcfl_engine.dp_noise import _leading_zeros, random_words, standard_normal
from bcfl_engine.errors import DPUnsupported, InvalidArgument, NonFiniteUpdate

# d = 4097 spans two Triton blocks of 4096 and C++ chunks of 1024 with a ragged tail; n = 131
# is prime; n = 1 and d = 1 are the degenerate ends.
SHAPES = [(1, 1), (2, 3), (7, 1000), (13, 4097), (131, 67)]
IDS = [f"n{n}-d{d}" for n, d in SHAPES]


def spread_rows(n: int, d: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    """Rows whose norms spread over [0.25, 4] * sqrt(d), a zero row when n > 1."""
    x = make_updates(n, d, torch.float32, seed) * torch.linspace(0.25, 4.0, n)[:, None]
    if n > 1:
        x[n // 2] = 0.0
    return x.to(dtype)


@pytest.mark.parametrize("n,d", SHAPES, ids=IDS)
def test_clipped_mean_matches_reference(backend: str, dtype: torch.dtype, n: int, d: int) -> None:
    x = spread_rows(n, d, dtype, seed=n + d)
    c, m = d**0.5, n + 3  # about half the rows over the bound; m != n (fixed divisor)
    got = bdp.clipped_mean(x, c, m, backend=backend)
    # Reference: clip_reference (float32 rows), then a float64 sum: the fast paths fold the
    # scale into a float32 coefficient, an ulp or two of float32 apart.
    assert_close(got, bdp.clipped_mean_reference(x, c, m), rtol=1e-5, atol=1e-6 * c / m)


def test_clipped_mean_is_clip_then_mean_when_m_is_n(backend: str) -> None:
    x = spread_rows(16, 300, torch.float32, seed=3)
    c = 300**0.5
    want = be.aggregate(x, rule="mean", pre=[("clip", {"max_norm": c})], backend="torch")
    assert_close(bdp.clipped_mean(x, c, 16, backend=backend), want, rtol=1e-5, atol=1e-6)


def test_clipped_mean_extreme_rows(backend: str) -> None:
    # Rows near 3e38 (coefficients below float32's normal range: those rows in float64), 1e30,
    # 1e19 (float32 squares overflow), 1e-30 (squares underflow), 1.
    x = extreme_rows(10, 257, seed=4)
    want = bdp.clipped_mean_reference(x, 1.0, 10)
    assert_close(bdp.clipped_mean(x, 1.0, 10, backend=backend), want, rtol=1e-5, atol=1e-7)


def test_clipped_mean_rejects_nonfinite(backend: str) -> None:
    x = poisoned(make_updates(5, 40), 3, math.nan)
    with pytest.raises(NonFiniteUpdate, match="update 3 holds NaN"):
        bdp.clipped_mean(x, 1.0, 5, backend=backend)


def test_aggregate_with_dp_and_no_noise_is_the_clipped_mean() -> None:
    x = spread_rows(9, 100, torch.float32, seed=5)
    dp = bdp.GaussianDP(clipping_norm=3.0, noise_multiplier=0.0, num_sampled_clients=9)
    got = be.aggregate(x, rule="mean", dp=dp)
    assert torch.equal(got, bdp.clipped_mean(x, 3.0, 9))
    arrays = be.aggregate(x.numpy(), rule="mean", dp=dp)  # the caller's structure back
    assert isinstance(arrays, np.ndarray) and np.array_equal(arrays, got.numpy())


def test_noise_std_and_mean_over_a_million_coordinates() -> None:
    d, std = 1_000_000, 0.37
    dp = bdp.GaussianDP(clipping_norm=2.0, noise_multiplier=std * 5 / 2.0, num_sampled_clients=5)
    assert dp.noise_std == pytest.approx(std, rel=1e-12)
    x = torch.zeros(5, d)  # the clipped mean is 0: the output is the noise
    z = be.aggregate(x, rule="mean", dp=dp, generator=bdp.NoiseGenerator(17)).double()
    s = float(z.std())
    assert abs(s / std - 1) < 0.01, f"empirical std {s} vs declared {std}"
    se = std / math.sqrt(d)
    assert abs(float(z.mean())) < 4 * se, f"mean {float(z.mean())} vs 4 standard errors {4 * se}"
    # The tails are there, at the Gaussian's rate: P(|z| > 4 sigma) = 6.3e-5, ~63 of 1M.
    tail = int((z.abs() > 4 * std).sum())
    assert 30 < tail < 110, tail


def test_noise_without_generator_differs_between_calls() -> None:
    dp = bdp.GaussianDP(clipping_norm=1.0, noise_multiplier=1.0, num_sampled_clients=1)
    x = torch.zeros(1, 1000)
    a, b = be.aggregate(x, dp=dp), be.aggregate(x, dp=dp)
    assert not torch.equal(a, b)
    assert float(a.abs().sum()) > 0 and float(b.abs().sum()) > 0


def test_generator_reproduces_and_advances() -> None:
    dp = bdp.GaussianDP(clipping_norm=1.0, noise_multiplier=1.0, num_sampled_clients=1)
    x = torch.zeros(1, 333)
    g1, g2 = bdp.NoiseGenerator(5), bdp.NoiseGenerator(5)
    first = be.aggregate(x, dp=dp, generator=g1)
    assert torch.equal(first, be.aggregate(x, dp=dp, generator=g2))
    assert not torch.equal(first, be.aggregate(x, dp=dp, generator=g1))  # the next draw


def test_numpy_and_native_noise_agree() -> None:
    # The numpy formula (no extension, or a CUDA tensor) and the C++ kernel: same words, same
    # normals to float32.
    d = 2001
    words = np.frombuffer(random_words(3 * ((d + 1) // 2), bdp.NoiseGenerator(9)), dtype="<u8")
    z = torch.from_numpy(standard_normal(words, d))
    out = bdp.add_noise_(torch.zeros(d), 1.0, bdp.NoiseGenerator(9))
    assert_close(out, z.float(), rtol=1e-6, atol=1e-7)


def test_leading_zeros_is_exact() -> None:
    x = np.array([0, 1, 2, 3, 2**63, 2**63 - 1, 2**40, 2**40 - 1, 2**53 + 1], dtype=np.uint64)
    assert _leading_zeros(x).tolist() == [64 - int(v).bit_length() for v in x]


def test_noise_std_zero_leaves_out_unchanged() -> None:
    out = torch.arange(5, dtype=torch.float32)
    assert torch.equal(bdp.add_noise_(out.clone(), 0.0), out)


@pytest.mark.parametrize("rule", ["median", "trimmed_mean", "krum", "geometric_median"])
def test_robust_rules_refuse_dp(rule: str) -> None:
    dp = bdp.GaussianDP(1.0, 1.0, 5)
    with pytest.raises(DPUnsupported, match="sensitivity"):
        be.aggregate(make_updates(9, 10), rule=rule, dp=dp)


def test_dp_refuses_weights_pre_steps_and_f() -> None:
    dp, x = bdp.GaussianDP(1.0, 1.0, 5), make_updates(5, 10)
    with pytest.raises(DPUnsupported, match="weights"):
        be.aggregate(x, dp=dp, weights=torch.ones(5))
    with pytest.raises(DPUnsupported, match="pre"):
        be.aggregate(x, dp=dp, pre=[("clip", {"max_norm": 1.0})])
    with pytest.raises(DPUnsupported, match="Byzantine"):
        be.aggregate(x, dp=dp, f=1)


@pytest.mark.parametrize(
    "kw",
    [
        {"clipping_norm": 0.0},
        {"clipping_norm": math.inf},
        {"noise_multiplier": -1.0},
        {"num_sampled_clients": 0},
        {"num_sampled_clients": 2.0},
        {"delta": 1.0},
        {"budget": 0.0},
        {"clipping_norm": True},
    ],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()),
)
def test_gaussian_dp_validates(kw: dict) -> None:
    args = {"clipping_norm": 1.0, "noise_multiplier": 1.0, "num_sampled_clients": 3, **kw}
    with pytest.raises(InvalidArgument):
        bdp.GaussianDP(**args)


def test_gaussian_dp_meta_round_trip() -> None:
    dp = bdp.GaussianDP(0.5, 1.1, 7, delta=1e-6, budget=3.0)
    assert bdp.GaussianDP.from_meta(dp.as_meta()) == dp


def test_dp_on_a_batch_ignores_its_weights_and_keeps_the_structure() -> None:
    x = spread_rows(4, 6, torch.float32, seed=6)
    batch = be.UpdateBatch(6, 4)
    for i in range(4):
        batch.add(f"c{i}", x[i], weight=float(i + 1))
    dp = bdp.GaussianDP(clipping_norm=2.0, noise_multiplier=0.0, num_sampled_clients=4)
    assert torch.equal(be.aggregate(batch, dp=dp), bdp.clipped_mean(x, 2.0, 4))
    dicts = [{"w": x[i, :4].reshape(2, 2), "b": x[i, 4:]} for i in range(4)]
    out = be.aggregate(dicts, dp=dp)
    assert set(out) == {"w", "b"} and out["w"].shape == (2, 2)
    assert_close(torch.cat([out["w"].reshape(-1), out["b"]]), bdp.clipped_mean(x, 2.0, 4))


def test_native_bindings_check_their_arguments() -> None:
    from bcfl_engine.backends import _load_native

    mod = _load_native()[0]
    if mod is None:
        pytest.skip("the extension is not built")
    x, out = torch.ones(3, 4), torch.empty(4)
    w, norms = torch.full((3,), 1 / 3, dtype=torch.float64), torch.empty(3, dtype=torch.float64)
    key = bytes(32)
    with pytest.raises(InvalidArgument, match="w"):
        mod.clipped_mean(x, w.float(), 1.0, norms, False, out, None, None, 0.0, None)
    with pytest.raises(InvalidArgument, match="max_norm"):
        mod.clipped_mean(x, w, 0.0, norms, False, out, None, None, 0.0, None)
    with pytest.raises(InvalidArgument, match="key must be 32 bytes"):
        mod.clipped_mean(x, w, 1.0, norms, False, out, bytes(31), b"", 1.0, None)
    with pytest.raises(InvalidArgument, match="message must be at most 64 bytes"):
        mod.clipped_mean(x, w, 1.0, norms, False, out, key, bytes(65), 1.0, None)
    with pytest.raises(InvalidArgument, match="std"):
        mod.clipped_mean(x, w, 1.0, norms, False, out, key, b"", -1.0, None)
    with pytest.raises(InvalidArgument, match="norms"):  # given norms are read: their shape
        mod.clipped_mean(
            x, w, 1.0, torch.ones(2, dtype=torch.float64), True, out, None, None, 0.0, None
        )
    with pytest.raises(InvalidArgument, match="words"):
        mod.add_gaussian(torch.zeros(5, dtype=torch.uint64), 1.0, out)  # needs 6 for d = 4
    with pytest.raises(InvalidArgument, match="std"):
        mod.add_gaussian(torch.zeros(6, dtype=torch.uint64), -1.0, out)


def test_noise_without_the_kernel_equals_the_kernels() -> None:
    # A strided (or CUDA) output takes the numpy path: the same stream, the same normals.
    d = 1001
    strided = torch.zeros(2 * d)[::2]
    bdp.add_noise_(strided, 0.5, bdp.NoiseGenerator(11))
    dense = bdp.add_noise_(torch.zeros(d), 0.5, bdp.NoiseGenerator(11))
    assert_close(strided, dense, rtol=1e-6, atol=1e-7)
    assert 0.4 < float(dense.std()) < 0.6  # noise of std 0.5 was added


# ---- the native kernel (csrc/dp.cpp) -----------------------------------------------------------

NATIVE_SHAPES = [(1, 5), (2, 3), (3, 1025), (17, 4097), (131, 67), (9, 20_000)]
NATIVE_IDS = [f"n{n}-d{d}" for n, d in NATIVE_SHAPES]


def _native_or_skip():
    from bcfl_engine.backends import _load_native

    if _load_native()[0] is None:
        pytest.skip("the extension is not built")


def _kernel_norms(x: torch.Tensor) -> torch.Tensor:
    """The row norms the native clipped mean computes (and writes back)."""
    from bcfl_engine.backends import _load_native

    n, d = x.shape
    norms = torch.empty(n, dtype=torch.float64)
    w = torch.ones(n, dtype=torch.float64)
    _load_native()[0].clipped_mean(x, w, 1.0, norms, False, torch.empty(d), None, None, 0.0, None)
    return norms


@pytest.mark.parametrize("n,d", NATIVE_SHAPES, ids=NATIVE_IDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_native_is_the_weighted_mean_of_the_clip_coefficients(
    n: int, d: int, dtype: torch.dtype
) -> None:
    """The native clipped mean is the plain weighted-mean kernel with the clip's float32
    coefficients, bit for bit; with the norms given (taken at intake) the same bits; and both
    equal the reference."""
    from bcfl_engine.backends import _load_native

    _native_or_skip()
    x = spread_rows(n, d, dtype, seed=n * d)
    c, m = d**0.5, n + 1
    mod = _load_native()[0]
    w = torch.full((n,), 1.0 / m, dtype=torch.float64)
    norms, got = torch.empty(n, dtype=torch.float64), torch.empty(d)
    mod.clipped_mean(x, w, c, norms, False, got, None, None, 0.0, None)
    assert_close(norms, torch.linalg.vector_norm(x.double(), dim=1), rtol=1e-6, atol=0)
    coef = w * torch.where(norms > c, c / norms, torch.ones_like(norms))
    want = torch.empty(d)
    mod.weighted_mean(x, coef.float(), want)
    assert torch.equal(got, want)
    assert torch.equal(cm_native(x, c, m), got)
    assert torch.equal(cm_native(x, c, m, norms=norms), got)  # the kernel's own norms
    assert_close(got, bdp.clipped_mean_reference(x, c, m), rtol=1e-5, atol=1e-6 * c / m)


def test_native_uses_the_norms_it_is_given() -> None:
    # Given norms are the caller's word (the batch's, taken at intake): the kernel reads them
    # instead of x's, so a row said to be at the bound is not scaled.
    _native_or_skip()
    x = torch.full((2, 4), 3.0)  # norms 6
    out = cm_native(x, 1.0, 2, norms=torch.ones(2, dtype=torch.float64))
    assert torch.equal(out, torch.full((4,), 3.0))
    assert_close(cm_native(x, 1.0, 2), torch.full((4,), 0.5))


def test_native_extreme_rows_and_thread_count() -> None:
    # Tiny coefficients (rows near 3e38: float64 products), float32 squares that overflow or
    # underflow (rechecked in float64); 1 or 2 threads: the same bits.
    _native_or_skip()
    x = extreme_rows(11, 1031, seed=8)
    want = bdp.clipped_mean_reference(x, 1.0, 11)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append(cm_native(x, 1.0, 11))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[1])
    assert_close(results[0], want, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("d", [1, 4097, 5000, 70_001])
def test_noise_in_the_final_write_equals_noise_after(d: int) -> None:
    """private_mean on the native backend adds the noise in the clipped mean's final write, its
    words made by the kernel's BLAKE3 block by block: the same bits as clipped_mean, then
    add_noise_ with the words of the blake3 package for the same draw."""
    _native_or_skip()
    x = spread_rows(6, d, torch.float32, seed=d)
    dp = bdp.GaussianDP(clipping_norm=d**0.5, noise_multiplier=0.8, num_sampled_clients=6)
    fused = bdp.private_mean(x, dp, backend="native", generator=bdp.NoiseGenerator(3))
    clean = bdp.clipped_mean(x, dp.clipping_norm, 6, backend="native")
    after = bdp.add_noise_(clean.clone(), dp.noise_std, bdp.NoiseGenerator(3))
    assert torch.equal(fused, after)
    assert not torch.equal(fused, clean)
    key = bdp.NoiseGenerator(3).next_key()
    norms = _kernel_norms(x)
    given = cm_native(x, dp.clipping_norm, 6, key, dp.noise_std, norms=norms)
    assert torch.equal(given, fused)  # and with the norms given, the same noise


def test_fused_noise_is_the_same_on_one_and_two_threads() -> None:
    # Column blocks of the fused path go to whichever thread claims them; the noise of a pair
    # depends on its words only, so the thread count does not change a bit (d spans several
    # blocks and ends in a partial noise block).
    _native_or_skip()
    d = 70_001
    x = spread_rows(5, d, torch.float32, seed=4)
    dp = bdp.GaussianDP(clipping_norm=d**0.5, noise_multiplier=1.0, num_sampled_clients=5)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            results.append(
                bdp.private_mean(x, dp, backend="native", generator=bdp.NoiseGenerator(6))
            )
            results.append(bdp.add_noise_(torch.zeros(d), 1.0, bdp.NoiseGenerator(6)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(results[0], results[2])
    assert torch.equal(results[1], results[3])


def test_private_mean_on_native_reports_a_nonfinite_update() -> None:
    _native_or_skip()
    dp = bdp.GaussianDP(clipping_norm=1.0, noise_multiplier=1.0, num_sampled_clients=5)
    x = poisoned(make_updates(5, 40), 2, math.inf)
    with pytest.raises(NonFiniteUpdate, match="update 2 holds NaN"):
        bdp.private_mean(x, dp, backend="native")


@pytest.mark.parametrize("message_len", [0, 1, 8, 63, 64])
def test_kernel_blake3_equals_the_blake3_package(message_len: int) -> None:
    """The kernel's keyed BLAKE3 output blocks, byte for byte, at any offset (counters past
    2^32 included) and for the two draws the noise uses (an OS key and no message; a seed's key
    and an 8-byte draw counter)."""
    import secrets

    import blake3

    _native_or_skip()
    from bcfl_engine.backends import _load_native

    mod = _load_native()[0]
    for first, count in [(0, 1), (0, 16), (3, 37), (384, 400), (2**32 - 5, 20), (2**40 + 7, 3)]:
        key, message = secrets.token_bytes(32), secrets.token_bytes(message_len)
        want = blake3.blake3(message, key=key).digest(length=64 * count, seek=64 * first)
        assert mod.blake3_xof(key, message, first, count) == want, (first, count)
