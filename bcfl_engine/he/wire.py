"""The wire formats of CKKS payloads, in pure Python + numpy: the reference codec and fallback.

Three nested formats, all little-endian (established from SEAL 4.x's ``Ciphertext::save_members``
and ``Serialization::Save``, TenSEAL's ``tensors.proto``, and bytes written by TenSEAL 0.3.18):

SEAL object (``Serialization::Save``): a 16-byte header ``magic u16 = 0xA15E, header_size u8 =
16, version_major u8, version_minor u8, compr_mode u8 (0 none, 1 zlib, 2 zstd), reserved u16 = 0,
size u64`` (the whole object, header included), then the body, compressed as one zlib stream
(``deflateInit``) or one zstd frame, or stored as is. SEAL's zstd frames declare their content
size; both codecs require it and check it against the ciphertext's size before decoding.

Every size a payload declares (compact header, ciphertext count against ``d``, SEAL object size,
ciphertext metadata, zstd content size) is checked against its byte length and the context
before anything is allocated for it (``tests/test_he_sizes.py``).

Ciphertext body (SEAL 4.x; 3.x lacks the correction factor and is refused here): ``parms_id
4 x u64, is_ntt_form u8, size u64 (2 for a fresh ciphertext), poly_modulus_degree u64 (N),
coeff_modulus_size u64 (K), scale f64, correction_factor u64 (1 for CKKS)``, then the residues
as a nested uncompressed SEAL object (a DynArray: header, ``count u64 = size * K * N``, then
``count`` u64 laid out ``[size, K, N]``). A body holding only ``K * N`` residues is a seeded
(symmetric) ciphertext: refused, TenSEAL never writes one.

TenSEAL ``CKKSVectorProto`` (protobuf 3): field 1 ``sizes`` (packed uint32: slots used by each
ciphertext), field 2 ``ciphertexts`` (bytes, one SEAL ciphertext each), field 3 ``scale``
(double). A vector longer than ``N / 2`` slots is cut into chunks of ``N / 2`` values, one
ciphertext each. bcfl_engine adds field 14 (varint: the number of reals ``d``) and field 15
(varint 2: two reals per complex slot) when it pairs values; protobuf readers such as TenSEAL's
skip fields they do not know.

Compact format (bcfl_engine, what :func:`~bcfl_engine.he.encrypt` sends): a 64-byte header
``magic b"BCKS", version u8 = 1, flags u8 (bit 0: bit-packed, bit 1: paired), K u16, N u32,
ciphertexts u32, d u64, parms_id 4 x u64, scale f64``, then the ``K`` primes (u64, so that a
compact payload is summed without a context), then the residues ``[C, 2, K, N]``: each
row of ``N`` residues of prime ``q_k`` either as u64 or bit-packed to ``bits(q_k)`` bits per
residue, least significant bit first (the row read as one little-endian integer).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import PayloadError
from .keys import ContextInfo
from .proto import parse_proto as parse_proto
from .proto import write_proto
from .seal import COMPR_NONE as COMPR_NONE
from .seal import COMPR_ZLIB as COMPR_ZLIB
from .seal import COMPR_ZSTD as COMPR_ZSTD
from .seal import (
    CT_META,
    PREFIX,
    SEAL_HEADER,
    _decompress,
    check_body_length,
    check_residues,
    seal_body,
    seal_header,
    write_seal_ciphertext,
    zstd_content_size,
)
from .seal import without_zstd as without_zstd

COMPACT_MAGIC = b"BCKS"
COMPACT = struct.Struct("<4sBBHIIQ4Qd")  # 64 bytes
FLAG_BITPACKED, FLAG_PAIR = 1, 2
POLY_DEGREES = (1024, 2048, 4096, 8192, 16384, 32768)
MAX_CIPHERTEXTS = 1 << 20  # per payload: 2^32 reals at N = 8192, and a bound on what we allocate


@dataclass(frozen=True)
class Layout:
    """What every payload of one batch shares (fixed by the first payload or the caller).

    ``sizes[c]`` is the number of slots ciphertext ``c`` uses (TenSEAL's ``sizes``); ``d`` the
    number of reals; ``pair`` whether two reals share a complex slot.
    """

    poly_degree: int
    primes: tuple[int, ...]
    parms_id: tuple[int, int, int, int]
    scale: float
    sizes: tuple[int, ...]
    d: int
    pair: bool

    @property
    def ciphertexts(self) -> int:
        return len(self.sizes)

    @property
    def residues(self) -> int:
        return len(self.primes)

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``[C, 2, K, N]``: one client's residues."""
        return (self.ciphertexts, 2, self.residues, self.poly_degree)


def chunk_sizes(d: int, slots: int, pair: bool) -> tuple[int, ...]:
    """Slots used by each ciphertext of a ``d``-real vector (TenSEAL chunks by ``slots``)."""
    per = slots * (2 if pair else 1)
    reals = [min(per, d - i) for i in range(0, d, per)]
    return tuple((r + 1) // 2 if pair else r for r in reals)


def check_meta(meta: tuple, layout: Layout) -> None:
    """Ciphertext metadata against the layout: parms_id, NTT form, size, N, K, scale."""
    pid, ntt, size, n, k, scale, cf = tuple(meta[:4]), *meta[4:]
    if pid != layout.parms_id:
        raise PayloadError(f"parms_id {pid} is not the batch's level {layout.parms_id}")
    if ntt != 1:
        raise PayloadError(f"ciphertext not in NTT form (flag {ntt}); CKKS ciphertexts are")
    if size != 2:
        raise PayloadError(f"ciphertext size {size}; expected 2 (relinearized)")
    if n != layout.poly_degree or k != layout.residues:
        raise PayloadError(
            f"ciphertext has N={n}, K={k}; expected N={layout.poly_degree}, K={layout.residues}"
        )
    if scale != layout.scale:
        raise PayloadError(f"ciphertext scale {scale!r}; expected {layout.scale!r}")
    if cf != 1:
        raise PayloadError(f"correction factor {cf}; CKKS ciphertexts have 1")


# ---------------------------------------------------------------- compact


def row_bytes(bits: int, poly_degree: int, bitpacked: bool) -> int:
    return poly_degree * bits // 8 if bitpacked else 8 * poly_degree


def pack_bits(row: np.ndarray, bits: int) -> bytes:
    """``N`` residues below ``2^bits`` as one little-endian bit string of ``N * bits`` bits."""
    b = np.unpackbits(row.astype("<u8").view(np.uint8).reshape(-1, 8), axis=1, bitorder="little")
    return np.packbits(b[:, :bits].reshape(-1), bitorder="little").tobytes()


def unpack_bits(raw: memoryview | bytes, bits: int, poly_degree: int) -> np.ndarray:
    b = np.unpackbits(np.frombuffer(raw, np.uint8), bitorder="little").reshape(poly_degree, bits)
    weights = np.left_shift(np.uint64(1), np.arange(bits, dtype=np.uint64))
    return (b.astype(np.uint64) * weights).sum(axis=1, dtype=np.uint64)


def write_compact(residues: np.ndarray, layout: Layout, bitpacked: bool = True) -> bytes:
    """The compact payload of ``residues`` ``[C, 2, K, N]``."""
    c, _, k, n = residues.shape
    flags = (FLAG_BITPACKED if bitpacked else 0) | (FLAG_PAIR if layout.pair else 0)
    head = COMPACT.pack(COMPACT_MAGIC, 1, flags, k, n, c, layout.d, *layout.parms_id, layout.scale)
    parts = [head, np.array(layout.primes, dtype="<u8").tobytes()]
    bits = [q.bit_length() for q in layout.primes]
    for ci in range(c):
        for p in range(2):
            for ki in range(k):
                row = residues[ci, p, ki]
                parts.append(pack_bits(row, bits[ki]) if bitpacked else row.astype("<u8").tobytes())
    return b"".join(parts)


# ---------------------------------------------------------------- payloads


def peek(blob: bytes | memoryview, info: ContextInfo | None = None) -> Layout:
    """The layout a payload declares, checked against the context (level, N, scale) if given.

    Without a context only a compact payload can be read: it carries its primes.
    """
    buf = memoryview(blob)
    proto = None
    if bytes(buf[:4]) == COMPACT_MAGIC:
        compact = compact_layout(buf)
        if info is None:
            return compact
        pid, n, scale = compact.parms_id, compact.poly_degree, compact.scale
        d: int | None = compact.d
        pair, cts = compact.pair, compact.ciphertexts
        level = info.level_of(pid)
        if level is not None and level.primes != compact.primes:
            raise PayloadError(
                f"compact primes {compact.primes} are not those of its level {level.primes}"
            )
    else:
        if info is None:
            raise PayloadError("a TenSEAL payload carries no primes: pass the public context")
        proto = parse_proto(buf)
        if not proto.spans:
            raise PayloadError("CKKSVectorProto holds no ciphertext")
        if len(proto.sizes) != len(proto.spans):
            raise PayloadError(
                f"CKKSVectorProto: {len(proto.sizes)} sizes for {len(proto.spans)} ciphertexts"
            )
        off, length = proto.spans[0]
        seal_header(buf[off : off + length])
        k = _residues_of(buf[off : off + length], info)
        meta, _ = seal_body(buf[off : off + length], k, info.poly_degree)
        for c, (o, ln) in enumerate(proto.spans):  # what each ciphertext's bytes can hold
            try:
                _, _, compr, _ = seal_header(buf[o : o + ln])
                check_body_length(compr, ln - SEAL_HEADER.size, k, info.poly_degree)
            except PayloadError as exc:
                raise PayloadError(f"ciphertext {c}: {exc}") from None
        pid, n, scale, pair = tuple(meta[:4]), meta[6], meta[8], proto.pair
        d, cts = proto.d if pair else sum(proto.sizes), len(proto.spans)
    level = info.level_of(pid)
    if level is None:
        raise PayloadError(
            f"parms_id {pid} is not a data level of this context (another key or context?)"
        )
    if n != info.poly_degree:
        raise PayloadError(f"N={n}; the context has N={info.poly_degree}")
    if scale != info.scale:
        raise PayloadError(f"scale {scale!r}; the context's scale is {info.scale!r}")
    if not 1 <= int(d or 0) <= MAX_CIPHERTEXTS * info.slots:
        raise PayloadError(f"vector length {d} out of range [1, {MAX_CIPHERTEXTS * info.slots}]")
    sizes = chunk_sizes(int(d or 0), info.slots, pair)
    if proto is not None and not pair and all(1 <= s <= info.slots for s in proto.sizes):
        # TenSEAL's own sizes, one per ciphertext: vectors laid end to end (an NVFlare
        # contribution's layers, bundled) keep theirs; sums need only that they match.
        sizes = tuple(proto.sizes)
    elif len(sizes) != cts:  # what d declares against the ciphertexts the bytes hold
        raise PayloadError(
            f"vector length d={d} needs {len(sizes)} ciphertexts; the payload holds {cts}"
        )
    return Layout(info.poly_degree, level.primes, level.parms_id, scale, sizes, int(d or 0), pair)


def _compact_header(buf: memoryview) -> tuple[int, int, int, int, int, list[Any]]:
    """``(flags, K, N, C, d, rest)`` of a compact header of a supported version, unchecked
    beyond that (the callers check the sizes against the bytes or against a batch)."""
    if len(buf) < COMPACT.size:
        raise PayloadError(f"compact payload of {len(buf)} bytes is shorter than its header")
    _, ver, flags, k, n, c, d, *rest = COMPACT.unpack_from(buf, 0)
    if ver != 1 or flags & ~(FLAG_BITPACKED | FLAG_PAIR):
        raise PayloadError(
            f"compact version {ver}, flags {flags:#x} not supported (expected 1, bits 0-1)"
        )
    return flags, k, n, c, d, rest


def compact_layout(buf: memoryview) -> Layout:
    """The layout a compact payload's header declares, checked against its byte length.

    Every declared size (K, N, C, d) is bounded and the payload must hold exactly the bytes they
    imply before anything is allocated for it: an 80-byte payload cannot declare 200 GiB.
    """
    flags, k, n, c, d, rest = _compact_header(buf)
    pid, scale, pair = tuple(rest[:4]), rest[4], bool(flags & FLAG_PAIR)
    if not (1 <= k <= 64 and n in POLY_DEGREES):
        raise PayloadError(f"compact header: K={k}, N={n} not a CKKS level")
    if len(buf) < COMPACT.size + 8 * k:
        raise PayloadError(f"compact payload of {len(buf)} bytes is shorter than its {k} primes")
    primes = tuple(int(q) for q in np.frombuffer(buf[COMPACT.size : COMPACT.size + 8 * k], "<u8"))
    if not all(1 < q < 2**60 for q in primes):
        raise PayloadError(f"compact header: primes {primes} not a CKKS level")
    if not 1 <= d <= MAX_CIPHERTEXTS * (n // 2) or not scale > 0:
        raise PayloadError(f"compact header: d={d}, scale={scale!r} out of range")
    per = (n // 2) * (2 if pair else 1)
    if c != -(-d // per):
        raise PayloadError(f"compact header: d={d} reals need {-(-d // per)} ciphertexts; C={c}")
    packed = bool(flags & FLAG_BITPACKED)
    want = COMPACT.size + 8 * k + c * 2 * sum(row_bytes(q.bit_length(), n, packed) for q in primes)
    if len(buf) != want:
        raise PayloadError(
            f"compact payload holds {len(buf)} bytes; its header (K={k}, N={n}, C={c}) declares {want}"
        )
    return Layout(n, primes, pid, scale, chunk_sizes(d, n // 2, pair), d, pair)


def _residues_of(ct: memoryview, info: ContextInfo) -> int:
    """K of a SEAL ciphertext, read from its (decompressed) metadata."""
    _, _, compr, _ = seal_header(ct)
    body = ct[16:]
    sizes = [PREFIX + 16 * len(level.primes) * info.poly_degree for level in info.levels]
    if compr == COMPR_ZSTD:  # the frame declares its size: one of the levels', or nothing decoded
        declared = zstd_content_size(body)
        if declared not in sizes:
            raise PayloadError(
                f"zstd frame declares a content size of {declared} bytes; a ciphertext of this "
                f"context has one of {sorted(set(sizes))}"
            )
        return _k_from(memoryview(_decompress(compr, body, declared)))
    if compr != COMPR_NONE:
        for size in sizes:  # the body length depends on K: try each level of the chain
            try:
                return _k_from(memoryview(_decompress(compr, body, size)))
            except PayloadError:
                continue
        raise PayloadError(
            "SEAL body does not decompress to a ciphertext of any level of this context"
        )
    return _k_from(body)


def _k_from(raw: memoryview) -> int:
    if len(raw) < CT_META.size:
        raise PayloadError("SEAL body shorter than the ciphertext metadata")
    return int(CT_META.unpack_from(raw, 0)[7])


def parse(blob: bytes | memoryview, layout: Layout) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Residues ``[C, 2, K, N]`` uint64 of a payload, validated against ``layout``.

    Returns the residues and the SEAL version of a TenSEAL payload (None for compact).
    """
    buf = memoryview(blob)
    out = np.empty(layout.shape, dtype=np.uint64)
    k, n = layout.residues, layout.poly_degree
    if bytes(buf[:4]) == COMPACT_MAGIC:
        flags, kk, nn, cc, d, rest = _compact_header(buf)
        # Each declared size against the batch's, named: they fix how many bytes follow.
        for name, value, want in zip(
            "KNCd", (kk, nn, cc, d), (k, n, layout.ciphertexts, layout.d), strict=True
        ):
            if value != want:
                raise PayloadError(f"compact header: {name}={value}; the batch has {name}={want}")
        got = (tuple(rest[:4]), rest[4], bool(flags & FLAG_PAIR))
        if got != (layout.parms_id, layout.scale, layout.pair):
            raise PayloadError(
                f"compact header (parms_id, scale, pairing) = {got}; expected "
                f"{(layout.parms_id, layout.scale, layout.pair)}"
            )
        primes_end = COMPACT.size + 8 * k
        if len(buf) < primes_end or np.frombuffer(
            buf[COMPACT.size : primes_end], "<u8"
        ).tolist() != list(layout.primes):
            raise PayloadError(f"compact primes differ from the batch's {layout.primes}")
        packed = bool(flags & FLAG_BITPACKED)
        bits = [q.bit_length() for q in layout.primes]
        total = primes_end + layout.ciphertexts * 2 * sum(row_bytes(b, n, packed) for b in bits)
        if len(buf) != total:
            raise PayloadError(f"compact payload holds {len(buf)} bytes; expected {total}")
        pos = primes_end
        for ci in range(layout.ciphertexts):
            for p in range(2):
                for ki in range(k):
                    size = row_bytes(bits[ki], n, packed)
                    raw = buf[pos : pos + size]
                    out[ci, p, ki] = (
                        unpack_bits(raw, bits[ki], n) if packed else np.frombuffer(raw, "<u8")
                    )
                    pos += size
            check_residues(out[ci], layout.primes, f"ciphertext {ci}")
        return out, None
    proto = parse_proto(buf)
    if len(proto.spans) != layout.ciphertexts or len(proto.sizes) != layout.ciphertexts:
        raise PayloadError(
            f"{len(proto.spans)} ciphertexts and {len(proto.sizes)} sizes; expected {layout.ciphertexts}"
        )
    if (
        proto.sizes != layout.sizes
        or proto.pair != layout.pair
        or (proto.pair and proto.d != layout.d)
    ):
        raise PayloadError(
            f"vector sizes {proto.sizes[:4]}...; the batch holds {layout.sizes[:4]}..."
        )
    if proto.scale != layout.scale:
        raise PayloadError(f"vector scale {proto.scale!r}; expected {layout.scale!r}")
    version = None
    for ci, (off, length) in enumerate(proto.spans):
        ct = buf[off : off + length]
        try:
            major, minor, _, _ = seal_header(ct)
            meta, data = seal_body(ct, k, n)
            check_meta(meta, layout)
        except PayloadError as exc:
            raise PayloadError(f"ciphertext {ci}: {exc}") from None
        version = version or (major, minor)
        out[ci] = np.frombuffer(data, "<u8").reshape(2, k, n)
        check_residues(out[ci], layout.primes, f"ciphertext {ci}")
    return out, version


def to_tenseal(
    residues: np.ndarray,
    layout: Layout,
    scale: float,
    version: tuple[int, int] = (4, 3),
    compr: int = 0,
) -> bytes:
    """A ``CKKSVectorProto`` of ``residues`` ``[C, 2, K, N]`` at ``scale`` that TenSEAL loads."""
    cts = [
        write_seal_ciphertext(residues[c], layout.parms_id, scale, version, compr)
        for c in range(len(residues))
    ]
    return write_proto(cts, layout.sizes, scale, layout.d, layout.pair)
