"""The lean payload format: a CKKS update switched to ``2^b`` (:mod:`bcfl_engine.he.lean`).

Little-endian. An 84-byte header ``magic b"BCKL", version u8 = 1, flags u8 (bit 1: paired),
b u8, k u8, N u32, ciphertexts C u32, d u64, parms_id 4 x u64 (of the level of ``q_0``), scale
f64 (the encoding scale at ``q_0``), q_0 u64, bound f64 (the largest ``|x|`` the client's preset
lets it encrypt), max_weight_sum u32 (the largest weight sum the preset's headroom holds)``,
then per ciphertext ``c``: ``c_0``'s ``N`` values ``t`` (``c'_0`` with ``k`` low bits rounded
away) bit-packed to ``b - k`` bits, then ``c_1``'s ``N`` values bit-packed to ``b`` bits, each
row least significant bit first (the row read as one little-endian integer). ``N`` is a
multiple of 8: every row is whole bytes. Paired: ``(2b - k) / 8`` bytes per real.

The header's headroom is checked against its own numbers when read: ``max_weight_sum * bound``
(times ``sqrt(2)`` when paired) must stay below ``q_0 / (2 scale)``, the largest slot an
aggregate holds before its coefficients wrap mod ``2^b``.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np

from ..backends import _load_native, native
from ..errors import PayloadError
from . import lean, wire
from .keys import ContextInfo
from .ntt import ntt, tables

LEAN_MAGIC = b"BCKL"
HEADER = struct.Struct("<4sBBBBIIQ4QdQdI")  # 84 bytes
FLAG_PAIR = 2


@dataclass(frozen=True)
class LeanLayout:
    """What every lean payload of one aggregate shares (fixed by the first payload)."""

    poly_degree: int
    q0: int
    parms_id: tuple[int, int, int, int]
    scale: float
    b: int
    k: int
    sizes: tuple[int, ...]
    d: int
    pair: bool
    bound: float
    max_weight_sum: int

    @property
    def ciphertexts(self) -> int:
        return len(self.sizes)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``[C, 2, N]``: one client's values."""
        return (self.ciphertexts, 2, self.poly_degree)

    @property
    def nbytes(self) -> int:
        return HEADER.size + self.ciphertexts * self.poly_degree * (2 * self.b - self.k) // 8

    def header(self) -> bytes:
        return HEADER.pack(
            LEAN_MAGIC, 1, FLAG_PAIR if self.pair else 0, self.b, self.k, self.poly_degree,
            self.ciphertexts, self.d, *self.parms_id, self.scale, self.q0, self.bound,
            self.max_weight_sum,
        )  # fmt: skip

    def compact(self) -> wire.Layout:
        """The layout of the aggregate lifted to ``q_0`` (a TenSEAL vector at ``q_0``)."""
        return wire.Layout(
            self.poly_degree, (self.q0,), self.parms_id, self.scale, self.sizes, self.d, self.pair
        )


def headroom_weight_sum(q0: int, scale: float, bound: float, pair: bool) -> int:
    """The largest weight sum whose aggregate of values within ``bound`` cannot wrap: its
    slots (``sqrt(2) bound`` per client when paired) stay below ``q_0 / (2 scale)``."""
    return int(q0 / (2 * scale) / (bound * (math.sqrt(2) if pair else 1.0)))


def layout_of(blob: bytes | memoryview) -> LeanLayout:
    """The layout a lean payload's header declares, checked: sizes against the byte length,
    b and k, and the stated headroom against ``q_0``, the scale and the bound."""
    buf = memoryview(blob)
    if len(buf) < HEADER.size or bytes(buf[:4]) != LEAN_MAGIC:
        raise PayloadError(f"not a lean payload ({len(buf)} bytes, magic {bytes(buf[:4])!r})")
    _, ver, flags, b, k, n, c, d, *rest = HEADER.unpack_from(buf, 0)
    pid, scale, q0, bound, wmax = tuple(rest[:4]), rest[4], rest[5], rest[6], rest[7]
    if ver != 1 or flags & ~FLAG_PAIR:
        raise PayloadError(f"lean version {ver}, flags {flags:#x} not supported (1, bit 1)")
    if n not in wire.POLY_DEGREES:
        raise PayloadError(f"lean header: N={n} is not a CKKS ring degree")
    try:
        lean.check_bits(q0, b, k)
    except ValueError as exc:
        raise PayloadError(f"lean header: {exc}") from None
    pair = bool(flags & FLAG_PAIR)
    if not 1 <= d <= wire.MAX_CIPHERTEXTS * (n // 2) or not scale > 0:
        raise PayloadError(f"lean header: d={d}, scale={scale!r} out of range")
    per = (n // 2) * (2 if pair else 1)
    if c != -(-d // per):
        raise PayloadError(f"lean header: d={d} reals need {-(-d // per)} ciphertexts; C={c}")
    if not (bound > 0 and math.isfinite(bound) and wmax >= 1):
        raise PayloadError(f"lean header: bound {bound!r}, max weight sum {wmax} out of range")
    room = headroom_weight_sum(q0, scale, bound, pair)
    if wmax > room:
        raise PayloadError(
            f"lean header: a weight sum of {wmax} at |x| <= {bound} exceeds the headroom of "
            f"q_0 / (2 scale) (at most {room})"
        )
    layout = LeanLayout(
        n, q0, pid, scale, b, k, wire.chunk_sizes(d, n // 2, pair), d, pair, bound, wmax
    )
    if len(buf) != layout.nbytes:
        raise PayloadError(
            f"lean payload holds {len(buf)} bytes; its header declares {layout.nbytes}"
        )
    return layout


def check_context(layout: LeanLayout, info: ContextInfo) -> None:
    """PayloadError unless ``layout`` is at the lowest level of the context ``info``."""
    low = info.lowest
    if layout.parms_id != low.parms_id or low.primes != (layout.q0,):
        raise PayloadError(
            f"lean payload at parms_id {layout.parms_id}, q_0 {layout.q0}; the context's lowest "
            f"level is {low.parms_id} over {low.primes}"
        )
    if layout.poly_degree != info.poly_degree or layout.scale != info.scale:
        raise PayloadError(
            f"lean payload N={layout.poly_degree}, scale {layout.scale!r}; the context has "
            f"N={info.poly_degree}, scale {info.scale!r}"
        )


def write(values: np.ndarray, layout: LeanLayout) -> bytes:
    """The lean payload of ``values`` ``[C, 2, N]`` (``t`` below ``2^(b-k)``, ``c'_1`` below
    ``2^b``), as :func:`~bcfl_engine.he.lean.switch` returns them."""
    v = np.ascontiguousarray(values).view(np.uint64).reshape(layout.shape)
    parts = [layout.header()]
    for c in range(layout.ciphertexts):
        parts.append(wire.pack_bits(v[c, 0], layout.b - layout.k))
        parts.append(wire.pack_bits(v[c, 1], layout.b))
    return b"".join(parts)


def parse(
    blob: bytes | memoryview, layout: LeanLayout, out: np.ndarray | None = None
) -> np.ndarray:
    """A payload's values modulo ``2^b`` -> uint64 ``[C, 2, N]`` (into ``out``, contiguous,
    when given), ``c_0`` read back as ``t 2^k``.

    PayloadError unless its header is exactly ``layout``'s (every payload of an aggregate
    shares one layout; a different bound or headroom is a different preset).
    """
    buf = memoryview(blob)
    if len(buf) < HEADER.size or bytes(buf[: HEADER.size]) != layout.header():
        got = layout_of(buf)  # names what is wrong with it, or how it differs
        raise PayloadError(f"lean payload layout {got} differs from the aggregate's {layout}")
    if len(buf) != layout.nbytes:
        raise PayloadError(f"lean payload holds {len(buf)} bytes; expected {layout.nbytes}")
    n, b, k = layout.poly_degree, layout.b, layout.k
    if out is None:
        out = np.empty(layout.shape, dtype=np.uint64)
    if _load_native()[0] is not None:
        import torch

        native().lean_unpack(buf, HEADER.size, b, k, torch.from_numpy(out.view(np.int64)))
        return out
    pos = HEADER.size
    for c in range(layout.ciphertexts):
        for p, bits in ((0, b - k), (1, b)):
            size = n * bits // 8
            out[c, p] = wire.unpack_bits(buf[pos : pos + size], bits, n)
            pos += size
    out[:, 0] <<= np.uint64(k)
    return out


def to_tenseal(values: np.ndarray, layout: LeanLayout) -> bytes:
    """``values`` ``[C, 2, N]`` modulo ``2^b`` (a sum of payloads) lifted to ``q_0`` and put back
    in NTT form: a ``CKKSVectorProto`` at ``q_0`` that TenSEAL loads and decrypts.

    With the extension built, the lift and the NTT run row by row in one native pass
    (``lean_finish``); without it, :func:`~bcfl_engine.he.lean.lift` then
    :func:`~bcfl_engine.he.ntt.ntt` in numpy. Both equal bit for bit (``tests/test_lean.py``).
    """
    import torch

    from .batch import to_tenseal as write

    compact = layout.compact()
    vals = np.ascontiguousarray(values).view(np.uint64).reshape(layout.shape)
    if _load_native()[0] is not None:
        tb = tables(layout.poly_degree, layout.q0)
        res = torch.empty(compact.shape, dtype=torch.int64)
        native().lean_finish(
            torch.from_numpy(vals.view(np.int64)), layout.q0, layout.b,
            torch.from_numpy(tb.fwd), torch.from_numpy(tb.fwd_p), res.view(layout.shape),
        )  # fmt: skip
        return write(res, compact, layout.scale, (4, 3), "native")
    lifted = lean.lift(vals, layout.q0, layout.b)
    residues = ntt(lifted, layout.q0)
    res = torch.from_numpy(residues.reshape(compact.shape).view(np.int64))
    return write(res, compact, layout.scale, (4, 3), "python")
