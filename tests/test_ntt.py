"""The negacyclic NTT against its definition and against SEAL's own secret key, bit for bit.

Small ``N`` where the property does not depend on ``N`` (the O(N^2) definition and the
schoolbook negacyclic product are the oracles); the real ``N = 8192`` against TenSEAL. The
primes are real SEAL primes (``1 mod 2^14``, so ``1 mod 2N`` for every ``N <= 8192``).
"""

from __future__ import annotations

import os
import random
import struct
import tempfile

import numpy as np
import pytest

from bcfl_engine.backends import _load_native
from bcfl_engine.errors import InvalidArgument
from bcfl_engine.he import ntt as T

_NATIVE = _load_native()[1]
if _NATIVE and os.environ.get("BCFL_REQUIRE_NATIVE") == "1":
    raise RuntimeError(f"BCFL_REQUIRE_NATIVE=1 but {_NATIVE}")
try:
    import triton  # noqa: F401

    _TRITON = None
except ImportError as exc:
    _TRITON = f"triton not installed ({exc})"
BACKEND = pytest.mark.parametrize(
    "backend",
    [
        pytest.param("numpy", id="numpy"),
        pytest.param(
            "native", id="native", marks=pytest.mark.skipif(bool(_NATIVE), reason=str(_NATIVE))
        ),
        pytest.param(
            "triton", id="triton", marks=pytest.mark.skipif(bool(_TRITON), reason=str(_TRITON))
        ),
    ],
)

# [60, 60, 60] at N = 8192 (the "threshold" preset) and two primes of [60, 40, 40].
PRIMES = [1152921504606683137, 1152921504606748673, 1152921504606830593, 1099510890497]


def _rand(n: int, q: int, seed: int) -> list[int]:
    r = random.Random(seed)
    return [r.randrange(q) for _ in range(n)]


@pytest.mark.parametrize("q", PRIMES, ids=lambda q: f"q{q.bit_length()}b_{q % 1000}")
@pytest.mark.parametrize("n", [2, 4, 16, 64])
@BACKEND
def test_ntt_matches_definition(n: int, q: int, backend: str) -> None:
    a = _rand(n, q, n)
    got = T.ntt(np.array(a, dtype=np.uint64), q, backend=backend)
    assert got.tolist() == T.ntt_reference(a, q)
    assert T.intt(got, q, backend=backend).tolist() == a


@pytest.mark.parametrize("q", PRIMES[2:], ids=["q60", "q40"])
@pytest.mark.parametrize("n", [8, 32])
def test_pointwise_product_is_negacyclic(n: int, q: int) -> None:
    a, b = _rand(n, q, 1), _rand(n, q, 2)
    prod = T.mulmod(
        T.ntt(np.array(a, dtype=np.uint64), q), T.ntt(np.array(b, dtype=np.uint64), q), q
    )
    assert T.intt(prod, q).tolist() == T.negacyclic_reference(a, b, q)


@BACKEND
def test_mul_add(backend: str) -> None:
    q, n = PRIMES[0], 32
    a = np.array([_rand(n, q, 7), [q - 1] * n], dtype=np.uint64)
    b = np.array(_rand(n, q, 8), dtype=np.uint64)
    c = np.array([_rand(n, q, 9), [q - 1] * n], dtype=np.uint64)
    got = T.mul_add(a, b, T.shoup(b, q), q, c, backend=backend)
    want = [
        [(int(x) * int(y) + int(z)) % q for x, y, z in zip(ra, b, rc, strict=True)]
        for ra, rc in zip(a, c, strict=True)
    ]
    assert got.tolist() == want
    assert T.mul_add(a, b, T.shoup(b, q), q, backend=backend).tolist() == [
        [int(x) * int(y) % q for x, y in zip(ra, b, strict=True)] for ra in a
    ]
    with pytest.raises(InvalidArgument, match="mul_add"):
        T.mul_add(a, b[:-1], T.shoup(b, q)[:-1], q, backend=backend)


@BACKEND
def test_extremes_and_batches(backend: str) -> None:
    """Residues at q - 1 (largest products), batched leading dimensions, signed round trips."""
    q, n = PRIMES[0], 64
    a = np.full((3, n), q - 1, dtype=np.uint64)
    a[1] = np.array(_rand(n, q, 5), dtype=np.uint64)
    got = T.ntt(a, q, backend=backend)
    for row in range(3):
        assert got[row].tolist() == T.ntt_reference(a[row].tolist(), q)
    assert np.array_equal(T.intt(got, q, backend=backend), a)
    x = np.array([-(2**53), -1, 0, 1, 2**53], dtype=np.int64)
    assert np.array_equal(T.to_signed(T.from_signed(x, q), q), x)
    big = np.array([q - 1, q - 2, 2**40], dtype=np.uint64)
    assert T.mulmod(big, big, q).tolist() == [int(v) * int(v) % q for v in big]


def test_minimal_root() -> None:
    q, n = PRIMES[3], 16
    psi = T.minimal_root(n, q)
    assert pow(psi, n, q) == q - 1  # primitive 2N-th root
    roots = [pow(psi, k, q) for k in range(1, 2 * n, 2)]
    assert psi == min(roots)


@pytest.mark.parametrize("n, q", [(12, PRIMES[0]), (16, 17 * 2**10 + 2), (8, 2**63 + 1)])
@BACKEND
def test_bad_sizes_are_refused(n: int, q: int, backend: str) -> None:
    with pytest.raises(InvalidArgument):
        T.ntt(np.zeros(n, dtype=np.uint64), q, backend=backend)


@BACKEND
def test_unreduced_input_is_refused(backend: str) -> None:
    a = np.zeros(8, dtype=np.uint64)
    a[3] = PRIMES[0]
    with pytest.raises(InvalidArgument, match="residue >= q"):
        T.intt(a, PRIMES[0], backend=backend)
    with pytest.raises(InvalidArgument, match="backend"):
        T.ntt(a[:2], PRIMES[0], backend="cuda")


@pytest.mark.skipif(bool(_NATIVE), reason=str(_NATIVE))
@pytest.mark.parametrize("q", PRIMES[2:], ids=["q60", "q40"])
def test_native_equals_numpy_at_full_size(q: int) -> None:
    """N = 8192, several rows (the OpenMP path), bit for bit both ways."""
    rng = np.random.default_rng(3)
    a = rng.integers(0, q, size=(2, 3, 8192), dtype=np.uint64)
    fwd = T.ntt(a, q, backend="numpy")
    assert np.array_equal(T.ntt(a, q, backend="native"), fwd)
    assert np.array_equal(T.intt(fwd, q, backend="native"), a)
    assert np.array_equal(T.intt(fwd, q, backend="numpy"), a)


def _tenseal_secret() -> tuple[list[int], np.ndarray]:
    """TenSEAL's own secret key of a [60, 60, 60] context: key-level primes, residues [K, N]."""
    import tenseal as ts
    import tenseal.sealapi  # registers SEAL's types
    import zstandard

    ctx = ts.context(ts.SCHEME_TYPE.CKKS, 8192, coeff_mod_bit_sizes=[60, 60, 60])
    kcd = ctx.seal_context().data.key_context_data()
    primes = [int(m.value()) for m in kcd.parms().coeff_modulus()]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "sk")
        ctx.secret_key().data.save(path)
        with open(path, "rb") as f:
            blob = f.read()
    assert blob[5] == 2  # zstd, TenSEAL's default
    raw = zstandard.ZstdDecompressor().decompress(blob[16:], max_output_size=1 << 24)
    coeff_count = struct.unpack_from("<Q", raw, 32)[0]  # after parms_id: a Plaintext's members
    assert coeff_count == 3 * 8192
    data = np.frombuffer(raw, "<u8", coeff_count, 48 + 16 + 8).reshape(3, 8192)
    return primes, data.astype(np.uint64)


@BACKEND
def test_seal_secret_key_bit_for_bit(backend: str) -> None:
    """INTT of SEAL's stored key is ternary and the same on every prime; its NTT is the bytes."""
    primes, stored = _tenseal_secret()
    assert primes == PRIMES[:3]
    coeffs = [T.to_signed(T.intt(stored[k], q, backend=backend), q) for k, q in enumerate(primes)]
    assert set(np.unique(coeffs[0]).tolist()) == {-1, 0, 1}
    for c in coeffs[1:]:
        assert np.array_equal(c, coeffs[0])
    for k, q in enumerate(primes):
        assert np.array_equal(T.ntt(T.from_signed(coeffs[0], q), q, backend=backend), stored[k])
