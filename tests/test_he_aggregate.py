"""he.aggregate against TenSEAL itself: bit-exact residues on stock payloads, precision on compact ones.

Most cases use the "test" preset (N = 2048, one prime at the lowest level: fast); one runs the
real default preset (N = 8192, primes 60/40/40, TenSEAL's stock payloads at two primes).
"""

from __future__ import annotations

import numpy as np
import pytest

from bcfl_engine import he
from bcfl_engine.errors import PayloadError
from bcfl_engine.he import wire

ts = pytest.importorskip("tenseal")


@pytest.fixture(scope="module")
def keys() -> he.Keys:
    return he.generate_keys("test")


@pytest.fixture(scope="module")
def default_keys() -> he.Keys:
    return he.generate_keys("default")


def residues_of(blob: bytes, k: int, n: int) -> np.ndarray:
    """Every residue of a CKKSVectorProto, read with the reference codec and no layout check."""
    proto = wire.parse_proto(memoryview(blob))
    out = [
        np.frombuffer(wire.seal_body(memoryview(blob)[o : o + ln], k, n)[1], "<u8")
        for o, ln in proto.spans
    ]
    return np.stack(out)


def tenseal_sum(ctx: object, blobs: list[bytes], weights: list[int] | None = None) -> bytes:
    """TenSEAL's own ``acc += ct``; an integer weight w is w additions (TenSEAL's ``ct * w``
    encodes w as a plaintext and rescales: a different ciphertext, not a bit-exact reference)."""
    weights = weights or [1] * len(blobs)
    acc = None
    for blob, w in zip(blobs, weights, strict=True):
        for _ in range(w):
            v = ts.ckks_vector_from(ctx, blob)
            acc = v if acc is None else acc + v
    assert acc is not None
    return acc.serialize()


def vectors(n: int, d: int, seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.uniform(-1, 1, d) for _ in range(n)]


# (n, d): one client; d = 1; prime n and d not a multiple of the 1024 slots; several chunks.
CASES = [(1, 1), (2, 1024), (3, 1000), (5, 2500)]


@pytest.mark.parametrize("n,d", CASES, ids=[f"n{n}-d{d}" for n, d in CASES])
@pytest.mark.parametrize("weighted", [False, True], ids=["sum", "int-weights"])
@pytest.mark.parametrize("codec", ["native", "python"])
def test_stock_payloads_sum_bit_exact_with_tenseal(
    keys: he.Keys, n: int, d: int, weighted: bool, codec: str
) -> None:
    if codec == "native":
        pytest.importorskip("bcfl_engine._C")
    ctx = keys.secret_context
    blobs = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in vectors(n, d, seed=n + d)]
    w = [(i % 3) + 1 for i in range(n)] if weighted else None
    got = he.aggregate(blobs, w, context=keys.public_context(), codec=codec)
    want = tenseal_sum(ctx, blobs, w)
    k, N = len(keys.info.highest.primes), keys.info.poly_degree
    a, b = residues_of(got, k, N), residues_of(want, k, N)
    assert a.shape == b.shape and np.array_equal(a, b), f"{int((a != b).sum())} residues differ"
    assert wire.parse_proto(memoryview(got)).sizes == wire.parse_proto(memoryview(want)).sizes
    np.testing.assert_array_equal(
        ts.ckks_vector_from(ctx, got).decrypt(), ts.ckks_vector_from(ctx, want).decrypt()
    )


def test_default_preset_stock_and_compact(default_keys: he.Keys) -> None:
    """The real 128-bit preset: bit-exact on stock payloads (two primes), precise on compact ones."""
    ctx, pub = default_keys.secret_context, default_keys.public_context()
    xs = vectors(3, 5000, seed=1)
    blobs = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in xs]
    got, want = he.aggregate(blobs, [2, 1, 1], context=pub), tenseal_sum(ctx, blobs, [2, 1, 1])
    assert np.array_equal(residues_of(got, 2, 8192), residues_of(want, 2, 8192))
    compact = [he.encrypt(x, pub) for x in xs]
    assert len(compact[0]) == 64 + 8 + 2 * 2 * 8192 * 60 // 8  # 2 ciphertexts of q_0 at 60 bits
    y = he.decrypt(he.aggregate(compact, [2, 1, 1], context=pub), ctx)
    bound = 4 * default_keys.preset.precision
    assert np.abs(y - (2 * xs[0] + xs[1] + xs[2])).max() <= bound


@pytest.mark.parametrize("pair", [False, True], ids=["real", "paired"])
@pytest.mark.parametrize("bitpacked", [True, False], ids=["bitpacked", "u64"])
def test_compact_aggregate_decrypts_within_precision(
    keys: he.Keys, pair: bool, bitpacked: bool
) -> None:
    pub, n, d = keys.public_context(), 4, 3001
    xs = vectors(n, d, seed=5)
    blobs = [he.encrypt(x, pub, pair=pair, bitpacked=bitpacked) for x in xs]
    w = [1, 2, 3, 1]
    y = he.decrypt(he.aggregate(blobs, w, context=pub), keys.secret_context)
    assert y.shape == (d,)
    err = np.abs(y - sum(wi * x for wi, x in zip(w, xs, strict=True))).max()
    assert err <= sum(w) * keys.preset.precision, err
    # without a context: compact payloads carry their primes
    y2 = he.decrypt(he.aggregate(blobs, w), keys.secret_context)
    np.testing.assert_array_equal(y, y2)


def test_fractional_weights_scale_the_result(keys: he.Keys) -> None:
    pub, xs = keys.public_context(), vectors(3, 700, seed=9)
    blobs = [he.encrypt(x, pub) for x in xs]
    w = [0.25, 0.5, 0.25]  # exact in 4 fractional bits: only CKKS noise remains
    agg = he.aggregate(blobs, w, context=pub, frac_bits=4)
    assert wire.parse_proto(memoryview(agg)).scale == keys.info.scale * 16
    y = he.decrypt(agg, keys.secret_context)
    assert (
        np.abs(y - (0.25 * xs[0] + 0.5 * xs[1] + 0.25 * xs[2])).max() <= 4 * keys.preset.precision
    )
    with pytest.raises(Exception, match="smaller frac_bits"):
        he.aggregate(blobs, w, context=pub, frac_bits=16)  # 2^36 scale > the 30-bit level


def test_fresh_encryption_meets_stated_precision(keys: he.Keys) -> None:
    x = np.random.default_rng(0).uniform(-1, 1, 4 * 1024)
    for pair in (False, True):
        y = he.decrypt(he.encrypt(x, keys.public_context(), pair=pair), keys.secret_context)
        assert np.abs(y - x).max() <= keys.preset.precision


def test_dropping_a_level_is_deleting_residues(default_keys: he.Keys) -> None:
    """SEAL's CKKS mod_switch_to_next == our drop of the last prime's rows, bit for bit."""
    import tenseal.sealapi as sa

    ctx = default_keys.secret_context
    sc = ctx.seal_context().data
    ct = ts.ckks_vector(ctx, [0.5, -1.5, 3.0]).ciphertext()[0]
    low = sa.Ciphertext(sc)
    sa.Evaluator(sc).mod_switch_to_next(ct, low)
    assert low.coeff_modulus_size() == 1 and low.scale == ct.scale
    n = 8192
    for p in range(2):
        for j in range(0, n, 97):  # Ciphertext[i] reads one residue: sample the polynomial
            assert low[p * n + j] == ct[p * 2 * n + j]


def test_bad_payloads_name_the_client_and_leave_the_batch(
    keys: he.Keys, default_keys: he.Keys
) -> None:
    pub, ctx = keys.public_context(), keys.secret_context
    good = [ts.ckks_vector(ctx, x.tolist()).serialize() for x in vectors(2, 1500, seed=3)]
    batch = he.CiphertextBatch(pub, 4)
    batch.add("alice", good[0])
    before = batch.residues.clone()
    other = ts.ckks_vector(default_keys.secret_context, [1.0] * 1500).serialize()
    short = ts.ckks_vector(ctx, [1.0] * 10).serialize()
    scaled = ts.ckks_vector(ctx, [1.0] * 1500, scale=2.0**21).serialize()
    compact = he.encrypt([1.0] * 1500, default_keys.public_context())
    for bad, match in [
        (other, "bob"),
        (short, "sizes|chunk"),
        (scaled, "scale"),
        (compact, "compact"),
        (good[1][:-100], "bob"),
        (b"", "bob"),
    ]:
        with pytest.raises(PayloadError, match=match):
            batch.add("bob", bad)
        assert len(batch) == 1 and batch.client_ids == ["alice"]
        assert np.array_equal(batch.residues, before)
    batch.add("bob", good[1])
    assert len(batch) == 2


def test_streaming_blocks_and_backends_give_the_same_bytes(keys: he.Keys) -> None:
    pub = keys.public_context()
    blobs = [he.encrypt(x, pub) for x in vectors(7, 1100, seed=2)]
    w = [1, 2, 3, 4, 5, 6, 7]
    want = he.aggregate(blobs, w, context=pub, backend="torch", codec="python")
    for block in (1, 2, 3, None):
        assert he.aggregate(blobs, w, context=pub, block=block) == want, block
    assert he.aggregate(blobs, w, context=pub, backend="triton", block=4) == want
    # a client sending two vectors: each position aggregated on its own
    pairs = he.aggregate([[b, b] for b in blobs], w, context=pub)
    assert pairs == [want, want]
