"""TenSEAL's ``CKKSVectorProto`` read and written by hand: protobuf varints and length-delimited fields.

Field 1 ``sizes`` (packed or not), field 2 ``ciphertexts``, field 3 ``scale`` (fixed64), and
bcfl_engine's fields 14 (``d``) and 15 (packing). Unknown fields of wire types 0, 1, 2 and 5 are
skipped as protobuf does; groups are refused. See :mod:`bcfl_engine.he.wire`.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ..errors import PayloadError

FIELD_SIZES, FIELD_CTS, FIELD_SCALE, FIELD_D, FIELD_PACK = 1, 2, 3, 14, 15
PACK_PAIR = 2


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(10):
        if pos >= len(buf):
            raise PayloadError(f"protobuf varint runs past the end at byte {pos}")
        b = buf[pos]
        pos += 1
        if i == 9 and b > 1:
            raise PayloadError("protobuf varint longer than 64 bits")
        value |= (b & 0x7F) << (7 * i)
        if not b & 0x80:
            return value, pos
    raise PayloadError("protobuf varint longer than 10 bytes")


def _put_varint(out: bytearray, value: int) -> None:
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


@dataclass(frozen=True)
class Proto:
    """A parsed ``CKKSVectorProto``: ciphertext spans ``(offset, length)`` into the payload."""

    sizes: tuple[int, ...]
    spans: tuple[tuple[int, int], ...]
    scale: float | None
    d: int | None
    pair: bool


def parse_proto(buf: memoryview) -> Proto:
    """Walk the protobuf fields of a ``CKKSVectorProto`` (no protobuf library)."""
    pos, end = 0, len(buf)
    sizes: list[int] = []
    spans: list[tuple[int, int]] = []
    scale: float | None = None
    d: int | None = None
    pack = 0
    while pos < end:
        tag, pos = _varint(buf, pos)
        field, wt = tag >> 3, tag & 7
        if field == 0:
            raise PayloadError("protobuf field number 0")
        if wt == 0:
            value, pos = _varint(buf, pos)
            if field == FIELD_SIZES:
                sizes.append(value)
            elif field == FIELD_D:
                d = value
            elif field == FIELD_PACK:
                pack = value
            elif field in (FIELD_CTS, FIELD_SCALE):
                raise PayloadError(f"protobuf field {field} has wire type 0")
        elif wt == 1:
            if pos + 8 > end:
                raise PayloadError("protobuf fixed64 runs past the end")
            if field == FIELD_SCALE:
                if scale is not None:
                    raise PayloadError("protobuf field scale appears twice")
                scale = struct.unpack_from("<d", buf, pos)[0]
            elif field in (FIELD_SIZES, FIELD_CTS, FIELD_D, FIELD_PACK):
                raise PayloadError(f"protobuf field {field} has wire type 1")
            pos += 8
        elif wt == 2:
            length, pos = _varint(buf, pos)
            if length > end - pos:
                raise PayloadError(f"protobuf length {length} exceeds the {end - pos} bytes left")
            if field == FIELD_SIZES:
                sub = pos
                while sub < pos + length:
                    value, sub = _varint(buf[: pos + length], sub)
                    sizes.append(value)
            elif field == FIELD_CTS:
                spans.append((pos, length))
            elif field in (FIELD_SCALE, FIELD_D, FIELD_PACK):
                raise PayloadError(f"protobuf field {field} has wire type 2")
            pos += length
        elif wt == 5:
            if pos + 4 > end or field in (FIELD_SIZES, FIELD_CTS, FIELD_SCALE, FIELD_D, FIELD_PACK):
                raise PayloadError(f"protobuf field {field}: bad fixed32")
            pos += 4
        else:
            raise PayloadError(f"protobuf wire type {wt} (groups) not allowed")
    if any(s > 0xFFFFFFFF for s in sizes):
        raise PayloadError("protobuf sizes entry exceeds uint32")
    if pack not in (0, PACK_PAIR):
        raise PayloadError(f"unknown value packing {pack} (expected 0 or {PACK_PAIR})")
    return Proto(tuple(sizes), tuple(spans), scale, d, pack == PACK_PAIR)


def write_proto(
    cts: list[bytes], sizes: tuple[int, ...], scale: float, d: int | None, pair: bool
) -> bytes:
    """A ``CKKSVectorProto`` TenSEAL loads (fields in number order, sizes packed)."""
    out = bytearray()
    packed = bytearray()
    for s in sizes:
        _put_varint(packed, s)
    out.append(FIELD_SIZES << 3 | 2)
    _put_varint(out, len(packed))
    out += packed
    for ct in cts:
        out.append(FIELD_CTS << 3 | 2)
        _put_varint(out, len(ct))
        out += ct
    out.append(FIELD_SCALE << 3 | 1)
    out += struct.pack("<d", scale)
    if pair:
        out.append(FIELD_D << 3)
        _put_varint(out, int(d or 0))
        out.append(FIELD_PACK << 3)
        _put_varint(out, PACK_PAIR)
    return bytes(out)


# A field of a serialized TenSEAL context larger than this holds key material (public, relin,
# Galois keys or the messages that carry them: 160 KB and more at N = 8192); its encryption
# parameters (a SEAL object of about 80 bytes at N = 8192, K = 3) and flags are far below it.
KEY_FIELD_BYTES = 4096


def context_parameters(buf: bytes | memoryview) -> bytes:
    """The parts of a serialized TenSEAL context that fix what its ciphertexts are: every top-level
    field but key material (fields over :data:`KEY_FIELD_BYTES`), as ``field, bytes`` pairs.

    Two contexts of the same parameters give the same bytes here, while their serializations
    differ: TenSEAL re-randomizes the keys each time a context is loaded (two loads of one
    context file serialize to different relinearization keys). Contexts of the same parameters
    but different secret keys cannot be told apart from public material, here or anywhere.
    """
    view = memoryview(buf)
    pos, end = 0, len(view)
    out = bytearray()
    while pos < end:
        start = pos
        tag, pos = _varint(view, pos)
        wt = tag & 7
        if wt == 0:
            _, pos = _varint(view, pos)
        elif wt in (1, 5):
            pos += 8 if wt == 1 else 4
        elif wt == 2:
            length, pos = _varint(view, pos)
            if length > KEY_FIELD_BYTES:
                pos += length
                continue
            pos += length
        else:
            raise PayloadError(f"protobuf wire type {wt} (groups) not allowed")
        if pos > end:
            raise PayloadError("the context's protobuf runs past its end")
        out += view[start:pos]
    return bytes(out)
