"""SEAL objects in pure Python + numpy: the header, a ciphertext's body (stored, zlib or zstd) and
its residues; the format is described in :mod:`bcfl_engine.he.wire`, whose names for these callers keep working.
"""

from __future__ import annotations

import struct
import zlib
from typing import Any

import numpy as np

from ..errors import PayloadError
from .proto import _put_varint, parse_proto

SEAL_MAGIC = 0xA15E
SEAL_HEADER = struct.Struct("<HBBBBHQ")  # magic, header size, major, minor, compr, reserved, size
COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD = 0, 1, 2
CT_META = struct.Struct("<4QBQQQdQ")  # parms_id, ntt, size, N, K, scale, correction factor (73 B)
PREFIX = CT_META.size + SEAL_HEADER.size + 8  # metadata, DynArray header, count: 97 bytes
ZSTD_MAGIC = 0xFD2FB528
_FCS_BYTES = (0, 2, 4, 8)  # Frame_Content_Size bytes by the descriptor's top two bits
_DICT_BYTES = (0, 1, 2, 4)  # Dictionary_ID bytes by its bottom two bits


def zstd_content_size(frame: memoryview) -> int:
    """The content size a zstd frame's header declares (RFC 8878, 3.1.1.1), read before decoding.

    SEAL always declares it; a frame that does not, or whose header is cut short or malformed,
    raises :class:`PayloadError`. Both codecs refuse the same frames (csrc/seal_zstd.cpp).
    """
    if len(frame) < 5 or struct.unpack_from("<I", frame, 0)[0] != ZSTD_MAGIC:
        raise PayloadError("SEAL body is not a zstd frame (bad magic number)")
    fhd = frame[4]
    single = bool(fhd & 0x20)
    if fhd & 0x08:
        raise PayloadError("zstd frame header invalid (reserved bit set)")
    fcs_bytes = _FCS_BYTES[fhd >> 6] or (1 if single else 0)
    pos = 5 + (0 if single else 1) + _DICT_BYTES[fhd & 3]
    if fcs_bytes == 0:
        raise PayloadError("zstd frame does not declare its content size (SEAL's always do)")
    if len(frame) < pos + fcs_bytes:
        raise PayloadError("zstd frame header invalid (cut short)")
    size = int.from_bytes(frame[pos : pos + fcs_bytes], "little")
    return size + 256 if fcs_bytes == 2 else size


def _decompress(mode: int, body: memoryview, expected: int) -> bytes:
    if mode == COMPR_ZLIB:
        dec = zlib.decompressobj()
        try:
            out = dec.decompress(body, expected + 1)
        except zlib.error as exc:
            raise PayloadError(f"zlib body is corrupt: {exc}") from None
        if len(out) > expected or dec.unconsumed_tail:
            raise PayloadError(f"zlib body inflates past the expected {expected} bytes")
        if not dec.eof or dec.unused_data:
            raise PayloadError("zlib body is truncated or has trailing bytes")
        return out
    try:
        import zstandard
    except ImportError:  # pragma: no cover - zstandard is in the he extra
        raise PayloadError(
            "zstd-compressed SEAL body but neither bcfl_engine._C nor zstandard"
        ) from None
    # zstandard allocates whatever the frame declares (1 TiB from 20 bytes): check it first.
    declared = zstd_content_size(body)
    if declared != expected:
        raise PayloadError(
            f"zstd frame declares a content size of {declared} bytes; expected {expected}"
        )
    try:
        dctx = zstandard.ZstdDecompressor()
        out = dctx.decompress(body, max_output_size=expected + 1, allow_extra_data=False)
    except zstandard.ZstdError as exc:
        raise PayloadError(f"zstd body is corrupt: {exc}") from None
    if len(out) != expected:
        raise PayloadError(f"zstd body holds {len(out)} bytes; expected {expected}")
    return out


def seal_header(buf: memoryview) -> tuple[int, int, int, int]:
    """Check a SEAL header; (major, minor, compr_mode, size)."""
    if len(buf) < SEAL_HEADER.size:
        raise PayloadError(f"SEAL object of {len(buf)} bytes is shorter than its 16-byte header")
    magic, hsize, major, minor, compr, reserved, size = SEAL_HEADER.unpack_from(buf, 0)
    if magic != SEAL_MAGIC or hsize != SEAL_HEADER.size or reserved != 0:
        raise PayloadError(f"not a SEAL header (magic {magic:#06x}, header size {hsize})")
    if major != 4:
        raise PayloadError(f"SEAL version {major}.{minor} not supported (expected 4.x)")
    if compr not in (COMPR_NONE, COMPR_ZLIB, COMPR_ZSTD):
        raise PayloadError(f"unknown SEAL compression mode {compr}")
    if size != len(buf):
        raise PayloadError(f"SEAL header says {size} bytes; the ciphertext field holds {len(buf)}")
    return major, minor, compr, size


def check_body_length(compr: int, body_len: int, residues: int, poly_degree: int) -> None:
    """A ciphertext body's length against the ``2 K N`` residues it must decode to.

    Stored: exactly ``PREFIX + 16 K N`` bytes. Compressed: at least one byte a residue. Residues
    are uniform below primes of 12 bits or more (``q = 1 mod 2N``, ``N >= 1024``): 1.5 bytes of
    entropy each, which no compressor removes (zstd keeps 1.05x of it on stock payloads). A
    shorter body is forged; it would let a few bytes (one zstd RLE block) claim a ciphertext's
    worth of batch memory each. Both codecs apply it (csrc/seal_body.cpp).
    """
    expected = PREFIX + 16 * residues * poly_degree
    if compr == COMPR_NONE and body_len != expected:
        raise PayloadError(f"SEAL body holds {body_len} bytes; expected {expected}")
    if compr != COMPR_NONE and body_len < 2 * residues * poly_degree:
        raise PayloadError(
            f"compressed SEAL body of {body_len} bytes for {2 * residues * poly_degree} "
            "residues: fewer than one byte a residue"
        )


def seal_body(buf: memoryview, residues: int, poly_degree: int) -> tuple[tuple, memoryview]:
    """Decompress a SEAL ciphertext; (metadata tuple, residue bytes of a size-2 ciphertext)."""
    _, _, compr, _ = seal_header(buf)
    expected = PREFIX + 16 * residues * poly_degree
    body = buf[SEAL_HEADER.size :]
    check_body_length(compr, len(body), residues, poly_degree)
    raw = body if compr == COMPR_NONE else memoryview(_decompress(compr, body, expected))
    meta = CT_META.unpack_from(raw, 0)
    dmagic, dhsize, _, _, dcompr, dres, dsize = SEAL_HEADER.unpack_from(raw, CT_META.size)
    (count,) = struct.unpack_from("<Q", raw, CT_META.size + SEAL_HEADER.size)
    data_bytes = 16 * residues * poly_degree
    if (dmagic, dhsize, dcompr, dres) != (SEAL_MAGIC, SEAL_HEADER.size, COMPR_NONE, 0):
        raise PayloadError("the residue array has no valid uncompressed SEAL header")
    if dsize != 24 + data_bytes or count != 2 * residues * poly_degree:
        raise PayloadError(
            f"residue array holds {count} values; expected {2 * residues * poly_degree}"
        )
    return meta, raw[PREFIX : PREFIX + data_bytes]


def without_zstd(blob: Any, residues: int, poly_degree: int) -> Any:
    """``blob`` with each zstd-compressed SEAL body stored instead, decompressed here (zstandard).

    For a native codec without a zstd library: it then reads the stored bodies (``residues`` K
    and ``poly_degree`` N: the batch's, which fix each body's size). The rest of the
    payload is kept byte for byte, so that codec still checks everything else; a compact payload
    or one without zstd bodies is returned as is. Raises :class:`PayloadError` as the Python
    codec does on a bad zstd body.
    """
    buf = memoryview(blob)
    if bytes(buf[:4]) == b"BCKS":  # compact (wire.COMPACT_MAGIC): no SEAL bodies
        return blob
    try:
        spans = parse_proto(buf).spans
    except PayloadError:
        return blob  # the native codec names the framing error
    zstd = [(o, n) for o, n in spans if n >= 16 and buf[o + 5] == COMPR_ZSTD]
    if not zstd:
        return blob
    size = PREFIX + 16 * residues * poly_degree
    parts: list[bytes | memoryview] = []
    pos = 0
    for off, length in zstd:
        ct = buf[off : off + length]
        major, minor, _, _ = seal_header(ct)
        raw = _decompress(COMPR_ZSTD, ct[16:], size)
        start = off - 1  # the length varint ends at off; each byte before its last has bit 7 set
        while start > 0 and buf[start - 1] & 0x80:
            start -= 1
        head = bytearray()
        _put_varint(head, 16 + len(raw))
        parts += [buf[pos:start], bytes(head)]
        parts += [SEAL_HEADER.pack(SEAL_MAGIC, 16, major, minor, COMPR_NONE, 0, 16 + len(raw)), raw]
        pos = off + length
    parts.append(buf[pos:])
    return b"".join(parts)


def check_residues(x: np.ndarray, primes: tuple[int, ...], where: str) -> None:
    """Every residue of ``x`` ``[..., K, N]`` below its prime."""
    q = np.array(primes, dtype=np.uint64)[:, None]
    bad = x >= q
    if bad.any():
        idx = np.argwhere(bad)[0]
        raise PayloadError(
            f"{where}: residue {int(x[tuple(idx)])} at {tuple(int(i) for i in idx)} not below its prime"
        )


def write_seal_ciphertext(
    residues: np.ndarray,
    parms_id: tuple[int, ...],
    scale: float,
    version: tuple[int, int],
    compr: int = 0,
) -> bytes:
    """One SEAL ciphertext object of ``residues`` ``[2, K, N]`` (uint64)."""
    _, k, n = residues.shape
    data = np.ascontiguousarray(residues, dtype="<u8").tobytes()
    major, minor = version
    body = (
        CT_META.pack(*parms_id, 1, 2, n, k, scale, 1)
        + SEAL_HEADER.pack(SEAL_MAGIC, 16, major, minor, COMPR_NONE, 0, 24 + len(data))
        + struct.pack("<Q", 2 * k * n)
        + data
    )
    if compr == COMPR_ZLIB:
        body = zlib.compress(body)
    elif compr == COMPR_ZSTD:
        import zstandard

        body = zstandard.ZstdCompressor().compress(body)
    return SEAL_HEADER.pack(SEAL_MAGIC, 16, major, minor, compr, 0, 16 + len(body)) + body
