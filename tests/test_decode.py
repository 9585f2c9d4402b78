"""The keyless CKKS decoder against TenSEAL's: the plaintext ``c0 + c1 s`` of real TenSEAL
ciphertexts (``s`` read from the context's own secret key) decodes to what TenSEAL decrypts."""

from __future__ import annotations

import os
import tempfile

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.he import ntt as T
from bcfl_engine.he import wire
from bcfl_engine.he.decode import centered, decode

ts = pytest.importorskip("tenseal")


def _secret(ctx: object, primes: tuple[int, ...]) -> np.ndarray:
    """The context's secret key in NTT form over ``primes`` (a prefix of the key level)."""
    import zstandard

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sk")
        ctx.secret_key().data.save(path)  # type: ignore[attr-defined]
        with open(path, "rb") as f:
            blob = f.read()
    raw = zstandard.ZstdDecompressor().decompress(blob[16:], max_output_size=1 << 24)
    n = ctx.seal_context().data.key_context_data().parms().poly_modulus_degree()  # type: ignore[attr-defined]
    key = np.frombuffer(raw, "<u8", offset=48 + 16 + 8).reshape(-1, n)
    return key[: len(primes)].astype(np.uint64)


def _plaintext(blob: bytes, ctx: object) -> tuple[np.ndarray, wire.Layout]:
    info = he.context_info(ctx)
    layout = wire.peek(blob, info)
    res, _ = wire.parse(blob, layout)
    s = _secret(ctx, layout.primes)
    m = np.empty((res.shape[0], *res.shape[2:]), dtype=np.uint64)
    for k, q in enumerate(layout.primes):
        m[:, k] = T.mul_add(res[:, 1, k], s[k], T.shoup(s[k], q), q, res[:, 0, k])
    return m, layout


@pytest.fixture(scope="module")
def threshold_ctx() -> object:
    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60, 60])
    ctx.global_scale = 2.0**80
    return ctx


@pytest.fixture(scope="module")
def default_ctx() -> object:
    return he.generate_keys("default").secret_context


@pytest.mark.parametrize("d", [1, 4096, 5000])
def test_two_primes_at_scale_2_80(threshold_ctx: object, d: int) -> None:
    x = np.random.default_rng(d).uniform(-3, 3, d)
    blob = ts.ckks_vector(threshold_ctx, x.tolist()).serialize()
    m, layout = _plaintext(blob, threshold_ctx)
    assert layout.residues == 2
    got = decode(m, layout.primes, layout.scale, layout.sizes, layout.d, layout.pair)
    want = he.decrypt(blob, threshold_ctx)
    assert got.shape == want.shape == (d,)
    assert np.abs(got - want).max() <= 1e-12
    assert np.abs(got - x).max() <= 1e-12  # scale 2^80: fresh noise is ~2^-70


@pytest.mark.parametrize("pair", [False, True], ids=["real", "paired"])
def test_one_prime_compact(default_ctx: object, pair: bool) -> None:
    x = np.random.default_rng(5).uniform(-1, 1, 9000)
    blob = he.encrypt(x, default_ctx, pair=pair)
    m, layout = _plaintext(blob, default_ctx)
    assert layout.residues == 1 and layout.pair == pair
    got = decode(m, layout.primes, layout.scale, layout.sizes, layout.d, layout.pair)
    want = he.decrypt(blob, default_ctx)
    assert np.abs(got - want).max() <= 1e-9


@pytest.mark.parametrize("k", [1, 2, 3])
def test_centered_against_python_integers(k: int) -> None:
    primes = (1152921504606683137, 1152921504606748673, 1099510890497)[:k]
    big = 1
    for q in primes:
        big *= q
    small = [0, 1, -1, 12345, -12345, 2**52, -(2**52)]
    large = [2**80 + 12345, -(2**80) - 7, 2**110, -(2**110)]
    if k == 3:  # Python integers: exact up to the edges of (-Q/2, Q/2]
        large += [big // 2, -(big // 2) + 1]
    values = small + (large if k > 1 else [2**58 + 3, -(2**58) - 3])
    x = np.array([[v % q for v in values] for q in primes], dtype=np.uint64)
    got = centered(x, primes)
    assert got[: len(small)].tolist() == [float(v) for v in small]  # exact
    for g, v in zip(got[len(small) :], values[len(small) :], strict=True):
        assert abs(g - v) <= abs(v) * 2.0**-51, (g, v)
