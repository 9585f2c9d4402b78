"""Negacyclic NTT over one RNS prime, in SEAL's exact convention, exact for primes below 2^62.

SEAL (and so TenSEAL) keeps keys and ciphertexts in this domain: for a prime ``q = 1 mod 2N``
and ``psi`` the *minimal* primitive ``2N``-th root of unity mod ``q`` (the smallest of its
``N`` odd powers of a primitive one), the forward transform of ``a`` (coefficients, natural
order) is, at output index ``j``::

    A[j] = a(psi^(2 * bitrev(j) + 1)) mod q        (bitrev over log2 N bits)

computed with Cooley-Tukey butterflies (natural order in, bit-reversed order out) and inverted
with Gentleman-Sande butterflies and a final multiplication by ``N^-1``. A pointwise product of
two transforms is the transform of the negacyclic product mod ``X^N + 1``.

Two implementations:

- :func:`ntt_reference`: the definition above, ``O(N^2)`` Python integers: the oracle of the
  tests, on small ``N``;
- the numpy backend of :func:`ntt` / :func:`intt`: butterflies vectorized over ``uint64`` with
  Shoup's multiplication by a precomputed constant (``w' = floor(w 2^64 / q)``; the 128-bit high
  word from four 32-bit products), exact for ``q < 2^62``; no floating point anywhere;
- the native backend (``csrc/ntt.cpp``, the extension ``bcfl_engine._C``): the same butterflies
  in C++, one polynomial per OpenMP task, equal to the numpy one bit for bit.

- the triton backend (``kernels/ntt.py``): one launch per stage on a CUDA device (or the CPU
  under ``TRITON_INTERPRET=1``), equal bit for bit too; only when asked for (``backend=
  "triton"``): a transform of one key is too small to pay a device round trip.

``backend=None`` takes the native one where the extension is built, else numpy.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from ..errors import InvalidArgument

_M32 = np.uint64(0xFFFFFFFF)
_S32 = np.uint64(32)


def _check(n: int, q: int) -> None:
    if n < 2 or n & (n - 1):
        raise InvalidArgument(f"NTT size must be a power of two >= 2; got {n}")
    if not 2 < q < 2**62 or (q - 1) % (2 * n):
        raise InvalidArgument(f"NTT prime must be 1 mod 2N={2 * n} and below 2^62; got {q}")


def bitrev(i: int, bits: int) -> int:
    """``i`` with its lowest ``bits`` bits in reverse order."""
    return int(format(i, f"0{bits}b")[::-1], 2) if bits else 0


@functools.lru_cache(maxsize=64)
def minimal_root(n: int, q: int) -> int:
    """SEAL's ``psi``: the smallest primitive ``2N``-th root of unity mod the prime ``q``."""
    _check(n, q)
    for x in range(2, 1 << 16):
        g = pow(x, (q - 1) // (2 * n), q)
        if pow(g, n, q) == q - 1:  # order exactly 2N (2N is a power of two)
            break
    else:  # pragma: no cover - half of all residues qualify
        raise InvalidArgument(f"{q} has no primitive {2 * n}-th root (not a prime?)")
    g2 = g * g % q
    best, cur = g, g
    for _ in range(n - 1):
        cur = cur * g2 % q
        best = min(best, cur)
    return best


def ntt_reference(a: list[int] | np.ndarray, q: int) -> list[int]:
    """The forward transform by its definition (``O(N^2)``; small ``N`` only)."""
    coeffs = [int(x) % q for x in a]
    n = len(coeffs)
    psi, bits = minimal_root(n, q), n.bit_length() - 1
    out = []
    for j in range(n):
        x = pow(psi, 2 * bitrev(j, bits) + 1, q)
        acc, xp = 0, 1
        for c in coeffs:
            acc = (acc + c * xp) % q
            xp = xp * x % q
        out.append(acc)
    return out


def negacyclic_reference(a: list[int], b: list[int], q: int) -> list[int]:
    """``a * b mod (X^N + 1, q)`` by schoolbook multiplication (small ``N`` only)."""
    n = len(a)
    out = [0] * n
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            k = i + j
            if k < n:
                out[k] = (out[k] + x * y) % q
            else:
                out[k - n] = (out[k - n] - x * y) % q
    return out


def mulhi(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """High 64 bits of the 128-bit products of two ``uint64`` arrays (four 32-bit products)."""
    a0, a1 = a & _M32, a >> _S32
    b0, b1 = b & _M32, b >> _S32
    mid1, mid2 = a1 * b0, a0 * b1
    t = ((a0 * b0) >> _S32) + (mid1 & _M32) + (mid2 & _M32)  # < 3 * 2^32: no wrap
    return a1 * b1 + (mid1 >> _S32) + (mid2 >> _S32) + (t >> _S32)


def shoup(w: np.ndarray | int, q: int) -> np.ndarray:
    """``floor(w 2^64 / q)`` for each ``w < q``: the constant of :func:`mulmod_shoup`."""
    wo = np.asarray(w, dtype=np.uint64).astype(object)
    return np.asarray((wo << 64) // q, dtype=object).astype(np.uint64)


def mulmod_shoup(a: np.ndarray, w: np.ndarray, wp: np.ndarray, q: np.uint64) -> np.ndarray:
    """``a * w mod q`` for ``a < 2^64``, ``w < q < 2^62``, ``wp = shoup(w, q)`` (Shoup 2009)."""
    r = a * w - mulhi(a, wp) * q  # wraps mod 2^64; the true value lies in [0, 2q)
    return np.where(r >= q, r - q, r)


def mulmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """Pointwise ``a * b mod q`` of two ``uint64`` arrays of residues below ``q``."""
    qq = np.uint64(q)
    b = np.asarray(b, dtype=np.uint64)
    return mulmod_shoup(np.asarray(a, dtype=np.uint64), b, shoup(b, q), qq)


def addmod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a + b mod q`` for residues below ``q < 2^63``."""
    s = a + b
    qq = np.uint64(q)
    return np.where(s >= qq, s - qq, s)


def submod(a: np.ndarray, b: np.ndarray, q: int) -> np.ndarray:
    """``a - b mod q`` for residues below ``q``."""
    qq = np.uint64(q)
    return np.where(a >= b, a - b, a + (qq - b))


def from_signed(x: np.ndarray, q: int) -> np.ndarray:
    """Signed integers (``int64``, ``|x| < q``) as residues mod ``q`` (``uint64``)."""
    x = np.asarray(x, dtype=np.int64)
    u = x.astype(np.uint64)
    return np.where(x < 0, u + np.uint64(q), u)  # u = x + 2^64 for x < 0: wraps to x + q


@dataclass(frozen=True)
class Tables:
    """Twiddle factors of one ``(N, q)``: powers of ``psi`` in bit-reversed order, with Shoup's
    constants, for the forward and the inverse transform."""

    n: int
    q: int
    psi: int
    fwd: np.ndarray
    fwd_p: np.ndarray
    inv: np.ndarray
    inv_p: np.ndarray
    n_inv: int


@functools.lru_cache(maxsize=64)
def tables(n: int, q: int) -> Tables:
    """The :class:`Tables` of ``(n, q)``, cached."""
    psi = minimal_root(n, q)
    bits = n.bit_length() - 1
    psi_inv = pow(psi, -1, q)
    powers, inv_powers = [1] * n, [1] * n
    for i in range(1, n):
        powers[i] = powers[i - 1] * psi % q
        inv_powers[i] = inv_powers[i - 1] * psi_inv % q
    fwd = np.array([powers[bitrev(i, bits)] for i in range(n)], dtype=np.uint64)
    inv = np.array([inv_powers[bitrev(i, bits)] for i in range(n)], dtype=np.uint64)
    return Tables(n, q, psi, fwd, shoup(fwd, q), inv, shoup(inv, q), pow(n, -1, q))


BACKENDS = ("numpy", "native", "triton")


def _prepare(a: np.ndarray, q: int, backend: str | None) -> tuple[np.ndarray, str]:
    """A checked ``uint64`` copy of ``a`` and the backend that transforms it."""
    x = np.array(a, dtype=np.uint64)  # a copy: the butterflies work in place
    if x.ndim == 0:
        raise InvalidArgument("an NTT input has at least one dimension [..., N]")
    _check(x.shape[-1], q)
    if x.size and int(x.max()) >= q:
        raise InvalidArgument(f"NTT input holds a residue >= q = {q}")
    if backend not in (None, *BACKENDS):
        raise InvalidArgument(f"NTT backend {backend!r}; known: {', '.join(BACKENDS)}")
    if backend in ("numpy", "triton"):
        return x, backend
    from ..backends import _load_native, native

    if backend == "native":
        native()  # BackendUnavailable with its reason
    elif _load_native()[0] is None:
        return x, "numpy"
    return x, "native"


def _native(x: np.ndarray, q: int, inverse: bool) -> np.ndarray:
    import torch

    from ..backends import native

    tb = tables(x.shape[-1], q)
    flat = torch.from_numpy(x.reshape(-1, x.shape[-1]))
    ninv = np.array(tb.n_inv, dtype=np.uint64)
    w, ws = (tb.inv, tb.inv_p) if inverse else (tb.fwd, tb.fwd_p)
    native().ntt(
        flat,
        q,
        torch.from_numpy(w),
        torch.from_numpy(ws),
        inverse,
        tb.n_inv,
        int(shoup(ninv, q)),
    )
    return x


def _triton(x: np.ndarray, q: int, inverse: bool) -> np.ndarray:
    import os

    import torch

    from ..errors import BackendUnavailable

    try:
        from ..kernels.ntt import ntt as launch
    except ImportError as exc:
        raise BackendUnavailable(f"triton not importable ({exc})") from None
    if torch.cuda.is_available():
        device = "cuda"
    elif os.environ.get("TRITON_INTERPRET") == "1":
        device = "cpu"
    else:
        raise BackendUnavailable("the triton NTT needs CUDA (or TRITON_INTERPRET=1 on the CPU)")
    n = x.shape[-1]
    tb = tables(n, q)
    ninv = np.array(tb.n_inv, dtype=np.uint64)

    def dev(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a).view(np.int64)).to(device)

    w, ws = (tb.inv, tb.inv_p) if inverse else (tb.fwd, tb.fwd_p)
    qt = dev(np.array([q], dtype=np.uint64))
    nt = dev(np.array([tb.n_inv, int(shoup(ninv, q))], dtype=np.uint64))
    flat = dev(x.reshape(-1, n))
    launch(flat, qt, dev(w), dev(ws), inverse, nt)
    return flat.cpu().numpy().view(np.uint64).reshape(x.shape)


def ntt(a: np.ndarray, q: int, backend: str | None = None) -> np.ndarray:
    """Forward negacyclic NTT of ``a`` ``[..., N]`` (residues below ``q``) -> ``[..., N]``
    ``uint64`` in SEAL's order (bit-reversed). Leading dimensions are transformed independently.
    ``backend``: "numpy", "native" or None (native where built)."""
    x, chosen = _prepare(a, q, backend)
    if chosen == "native":
        return _native(x, q, inverse=False)
    if chosen == "triton":
        return _triton(x, q, inverse=False)
    n = x.shape[-1]
    tb, qq = tables(n, q), np.uint64(q)
    lead = x.shape[:-1]
    m, t = 1, n
    while m < n:
        t //= 2
        v = x.reshape(*lead, m, 2, t)
        w, wp = tb.fwd[m : 2 * m, None], tb.fwd_p[m : 2 * m, None]
        u = v[..., 0, :].copy()
        prod = mulmod_shoup(v[..., 1, :], w, wp, qq)
        v[..., 0, :] = addmod(u, prod, q)
        v[..., 1, :] = submod(u, prod, q)
        m *= 2
    return x


def intt(a: np.ndarray, q: int, backend: str | None = None) -> np.ndarray:
    """Inverse of :func:`ntt`: SEAL-ordered ``[..., N]`` -> coefficients in natural order."""
    x, chosen = _prepare(a, q, backend)
    if chosen == "native":
        return _native(x, q, inverse=True)
    if chosen == "triton":
        return _triton(x, q, inverse=True)
    n = x.shape[-1]
    tb, qq = tables(n, q), np.uint64(q)
    lead = x.shape[:-1]
    m, t = n, 1
    while m > 1:
        h = m // 2
        v = x.reshape(*lead, h, 2, t)
        w, wp = tb.inv[h : 2 * h, None], tb.inv_p[h : 2 * h, None]
        u, y = v[..., 0, :].copy(), v[..., 1, :].copy()
        v[..., 0, :] = addmod(u, y, q)
        v[..., 1, :] = mulmod_shoup(submod(u, y, q), w, wp, qq)
        t *= 2
        m = h
    ninv = np.array(tb.n_inv, dtype=np.uint64)
    return mulmod_shoup(x, ninv, shoup(ninv, q), qq)


def mul_add(
    a: np.ndarray,
    b: np.ndarray,
    bs: np.ndarray,
    q: int,
    c: np.ndarray | None = None,
    backend: str | None = None,
) -> np.ndarray:
    """``a * b + c mod q`` -> new ``uint64`` ``[..., N]``: ``a`` and ``c`` ``[..., N]``, ``b``
    ``[N]`` with ``bs = shoup(b, q)`` (precomputed: the operand that stays, a key), residues
    below ``q < 2^62``; ``c`` None adds nothing. Same backends as :func:`ntt`, equal bit for bit."""
    x, chosen = _prepare(a, q, backend)
    n = x.shape[-1]
    b = np.ascontiguousarray(b, dtype=np.uint64)
    bs = np.ascontiguousarray(bs, dtype=np.uint64)
    if b.shape != (n,) or bs.shape != (n,):
        raise InvalidArgument(f"mul_add: b and bs must be [{n}]; got {b.shape}, {bs.shape}")
    if c is not None:
        c = np.ascontiguousarray(c, dtype=np.uint64)
        if c.shape != x.shape:
            raise InvalidArgument(f"mul_add: c must be {x.shape}; got {c.shape}")
    if chosen in ("numpy", "triton"):  # no triton kernel: a device round trip would dominate
        prod = mulmod_shoup(x, b, bs, np.uint64(q))
        return prod if c is None else addmod(prod, c, q)
    import torch

    from ..backends import native

    flat = torch.from_numpy(x.reshape(-1, n))
    cc = None if c is None else torch.from_numpy(c.reshape(-1, n))
    native().mul_add_mod(flat, q, torch.from_numpy(b), torch.from_numpy(bs), cc, flat)
    return x


def to_signed(x: np.ndarray, q: int) -> np.ndarray:
    """Residues mod ``q`` as centered signed integers ``(-q/2, q/2]`` (``int64``)."""
    x = np.asarray(x, dtype=np.uint64)
    half = np.uint64(q // 2)
    return np.where(x > half, -((np.uint64(q) - x).astype(np.int64)), x.astype(np.int64))
