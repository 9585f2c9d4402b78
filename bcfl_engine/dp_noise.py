"""Gaussian noise for differential privacy from a cryptographically secure stream.

Where the bits come from: BLAKE3 in keyed mode as an extendable-output function (XOF). The
key is 32 bytes from the operating system's CSPRNG (:func:`secrets.token_bytes`), fresh for
every draw; the output stream of keyed BLAKE3 is a pseudorandom function of that key (the
BLAKE3 paper's security claim, 128-bit security), so the noise is unpredictable to anyone who
does not hold the key, even one who sees other draws or the noised aggregates of other rounds.
No statistical generator (Mersenne Twister, PCG, numpy's legacy RandomState) is involved: those
are predictable from their outputs, and the adversary of differential privacy may know every
update but one, i.e. see the noise nearly in the clear. The XOF runs at ~6 GB/s on one core
of this machine: 12 MB for 1M coordinates in ~2 ms. The native private mean makes the words
itself (``csrc/blake3_xof.cpp``, the same bytes as the blake3 package, tested), block by block
where they are used, from the draw's key (:func:`draw_key`): no 12 MB buffer.

How bits become normals: Box-Muller in float64 (``csrc/dp.cpp``, OpenMP, with libmvec's vector
log, sin and cos on x86-64 glibc, at most 4 ulp; a numpy version of the same formula without
the extension), three 64-bit words per pair of coordinates, no rejection. The radius's uniform has a 52-bit mantissa at every scale down to 2^-65 (its binary
exponent from the leading zeros of a word), so the tails have no gaps: a 53-bit fixed-point
uniform makes the radius jump by ~0.1 past 8 sigma, and float32 sampling jumps much earlier
(Mironov, "On significance of the least significant bits for differential privacy", CCS 2012).
Each noised value is ``float32(out + std * z)`` with the sum in float64, rounded once. |z| is
at most 9.5; P(|z| > 9) < 1e-18 per coordinate.

Tests pass ``generator=NoiseGenerator(seed)``: the same stream from the same seed, a new block of
it at each draw. Never in production: whoever knows the seed knows the noise.
"""

from __future__ import annotations

import math
import secrets
import warnings
from typing import Any

import numpy as np
import torch

from .errors import InvalidArgument


class NoiseGenerator:
    """A reproducible noise stream, for tests and replays: draw ``k`` is keyed BLAKE3 of the
    draw counter under ``blake3("bcfl dp noise seed" + seed)``. Whoever knows ``seed`` knows
    the noise, so a private aggregate never uses one (``generator=None`` draws a fresh key
    from the operating system each time)."""

    def __init__(self, seed: int | bytes) -> None:
        import blake3

        if isinstance(seed, bool) or not isinstance(seed, (int, bytes)):
            raise InvalidArgument(f"seed must be an int or bytes; got {type(seed).__name__}")
        raw = seed if isinstance(seed, bytes) else str(seed).encode()
        self.key = blake3.blake3(b"bcfl dp noise seed" + raw).digest()
        self.draws = 0

    def next_key(self) -> tuple[bytes, bytes]:
        """The next draw's ``(key, message)``: its words are keyed BLAKE3 of ``message``."""
        message = self.draws.to_bytes(8, "little")
        self.draws += 1
        return self.key, message

    def words(self, count: int) -> bytes:
        """The next draw: ``8 * count`` bytes of the stream."""
        return _xof(*self.next_key(), count)


def _xof(key: bytes, message: bytes, count: int) -> bytes:
    import blake3

    return blake3.blake3(message, key=key).digest(length=8 * count)


def draw_key(generator: NoiseGenerator | None = None) -> tuple[bytes, bytes]:
    """One draw's ``(key, message)``: a fresh 32-byte OS key and no message, or ``generator``'s
    next. The draw's words are keyed BLAKE3 of the message, read as an extendable output (the
    native kernel makes them itself, block by block: ``csrc/blake3_xof.cpp``)."""
    if generator is None:
        return secrets.token_bytes(32), b""
    if not isinstance(generator, NoiseGenerator):
        raise InvalidArgument(
            f"generator must be a bcfl_engine.dp.NoiseGenerator or None; got {type(generator).__name__}"
        )
    return generator.next_key()


def random_words(count: int, generator: NoiseGenerator | None = None) -> bytes:
    """``count`` 64-bit words (little-endian bytes) from a fresh OS key, or from ``generator``."""
    return _xof(*draw_key(generator), count)


def _native() -> Any:
    from .backends import _load_native

    return _load_native()[0]


def add_noise_(
    out: torch.Tensor, std: float, generator: NoiseGenerator | None = None
) -> torch.Tensor:
    """Add ``N(0, std^2)`` to each value of ``out`` (float32 ``[d]``, any device) in place and
    return it; ``std == 0`` leaves it unchanged and draws nothing."""
    if not isinstance(out, torch.Tensor) or out.dtype != torch.float32 or out.dim() != 1:
        raise InvalidArgument("add_noise_: out must be a 1-D float32 tensor")
    if isinstance(std, bool) or not isinstance(std, (int, float)) or not math.isfinite(std):
        raise InvalidArgument(f"add_noise_: std must be a finite number >= 0; got {std!r}")
    if std < 0:
        raise InvalidArgument(f"add_noise_: std must be >= 0; got {std}")
    if std == 0:
        return out
    d = out.numel()
    words = noise_words(d, generator)
    mod = _native()
    if out.device.type == "cpu" and out.is_contiguous() and mod is not None:
        mod.add_gaussian(words, float(std), out)
        return out
    z = torch.from_numpy(standard_normal(words.numpy(), d))
    # float32 + float64 in place: the sum in float64, rounded once.
    return out.add_(z.to(out.device), alpha=float(std))


class PreparedNoise:
    """The standard normals of one fresh draw, made before the aggregate that adds them: a
    private mean given them (``private_mean(..., noise=)``, ``be.aggregate(..., noise=)``) adds
    ``dp.noise_std * z`` in its final write, one read of ``z`` (8 bytes a coordinate) instead of
    making the noise there; a round makes its draw while it waits for its clients. The same
    bits as the noise the native private mean makes from the same draw's key.

    Used once: a second :meth:`take` raises (reused noise is no noise). Make one with
    :func:`prepare_noise`.
    """

    def __init__(self, z: torch.Tensor) -> None:
        self.dim = int(z.numel())
        self._z: torch.Tensor | None = z

    def take(self) -> torch.Tensor:
        """The normals, float64 ``[dim]``; InvalidArgument if they were taken before."""
        z, self._z = self._z, None
        if z is None:
            raise InvalidArgument("this noise was already added to an aggregate: draw new noise")
        return z

    @property
    def used(self) -> bool:
        return self._z is None

    def __repr__(self) -> str:
        return f"PreparedNoise(dim={self.dim}, used={self.used})"


def prepare_noise(d: int, generator: NoiseGenerator | None = None) -> PreparedNoise:
    """The normals of ``d`` coordinates of a fresh draw (``generator``'s next for tests), made
    now (natively where the extension is built, in parallel)."""
    if isinstance(d, bool) or not isinstance(d, int) or d < 1:
        raise InvalidArgument(f"prepare_noise: d must be an int >= 1; got {d!r}")
    key, message = draw_key(generator)
    mod = _native()
    if mod is not None:
        z = torch.empty(d, dtype=torch.float64)
        mod.gaussian_normals(key, message, z)
        return PreparedNoise(z)
    words = np.frombuffer(_xof(key, message, 3 * ((d + 1) // 2)), dtype=np.uint64)
    return PreparedNoise(torch.from_numpy(standard_normal(words, d)))


def noise_words(d: int, generator: NoiseGenerator | None = None) -> torch.Tensor:
    """The words of ``d`` normals, uint64 ``[3 * ceil(d / 2)]`` (read-only: do not write)."""
    raw = random_words(3 * ((d + 1) // 2), generator)
    with warnings.catch_warnings():
        # The words are only read: bytes wrapped without a copy (a copy costs page faults,
        # ~10 ms for the 12 MB of d = 1M).
        warnings.filterwarnings("ignore", "The given buffer is not writable")
        return torch.frombuffer(raw, dtype=torch.uint64)


def standard_normal(words: np.ndarray, d: int) -> np.ndarray:
    """``d`` standard normals (float64) from ``3 * ceil(d / 2)`` words: the C++ kernel's
    formula in numpy (its values may differ in the last bit, libm against numpy)."""
    w = words.reshape(-1, 3)
    k = _leading_zeros(w[:, 1])
    bits = ((1022 - k).astype(np.uint64) << np.uint64(52)) | (w[:, 0] >> np.uint64(12))
    u = bits.view(np.float64)
    r = np.sqrt(-2.0 * np.log(u))
    t = (2.0 * np.pi) * ((w[:, 2] >> np.uint64(11)).astype(np.float64) * 2.0**-53)
    z = np.empty(2 * w.shape[0])
    z[0::2] = r * np.cos(t)
    z[1::2] = r * np.sin(t)
    return z[:d]


def _leading_zeros(x: np.ndarray) -> np.ndarray:
    """The leading zero bits of each uint64 (64 for 0), by binary search: exact."""
    x = x.copy()
    k = np.zeros(x.shape, dtype=np.int64)
    for s in (32, 16, 8, 4, 2, 1):
        empty = (x >> np.uint64(64 - s)) == 0
        k += np.where(empty, s, 0)
        x = np.where(empty, x << np.uint64(s), x)
    return k + (x == 0)
