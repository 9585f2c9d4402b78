"""Byte formats of multiparty CKKS keys (:mod:`bcfl_engine.he.multiparty`), all little-endian.

Key file (secret, 0600, never leaves its party): ``magic b"BMPK", version u8 = 1, party u32,
preset name (u8 length + ASCII), seed (32 bytes)``, then, once the party accepted its t-of-n
dealing, its Shamir state: ``threshold u16, n u16, party ids (u32 each), K u16, N u32, residues
[K, N] u64`` (its point of the summed Shamir polynomial, NTT form).

Dealt share (secret: from one dealer to one recipient only): ``magic b"BMPT", version u8 = 1,
dealer u32, recipient u32, then the Shamir state layout above with the dealer's polynomial
evaluated at the recipient, then the preset name``.

Public share (broadcast in round 2): ``magic b"BMPS", version u8 = 1, party u32, CRS (32
bytes), K u16, N u32, the K key-level primes (u64), residues [K, N] u64`` (NTT form).

Decryption share: ``magic b"BMPD", version u8 = 1, party u32, c1 digest (32 bytes), active
count u16, active party ids (u32 each, ascending), preset name (u8 length + ASCII), C u32,
K u16, N u32, residues [C, K, N] u64`` (NTT form, the ciphertext's primes).

Public context: TenSEAL's ``ContextProto`` (field 1 encryption parameters, field 2 public
context: 1 public key, 2 auto flags, 3 scale; no field 3, so it loads as public-only) with the
public key replaced by the collective one: a SEAL ``PublicKey`` is a size-2 ciphertext at the
key level (every prime, the special one included), in NTT form, scale 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import KeyShareError
from .proto import _put_varint, _varint
from .seal import SEAL_HEADER, write_seal_ciphertext

KEY_MAGIC, SHARE_MAGIC, DEC_MAGIC, DEALT_MAGIC = b"BMPK", b"BMPS", b"BMPD", b"BMPT"
VERSION = 1
SEED_BYTES = 32
MAX_PARTY = 2**31 - 1
_HEAD = struct.Struct("<4sBI")  # magic, version, party


def _name(buf: bytes, pos: int, what: str, party: int | None) -> tuple[str, int]:
    if pos >= len(buf):
        raise KeyShareError(f"{what} cut short before its preset name", party)
    ln = buf[pos]
    raw = buf[pos + 1 : pos + 1 + ln]
    if len(raw) != ln or not raw.isascii():
        raise KeyShareError(f"{what}: bad preset name", party)
    return raw.decode(), pos + 1 + ln


def _head(buf: bytes, magic: bytes, what: str) -> int:
    if len(buf) < _HEAD.size:
        raise KeyShareError(f"{what} of {len(buf)} bytes is shorter than its header")
    m, ver, party = _HEAD.unpack_from(buf, 0)
    if m != magic or ver != VERSION:
        raise KeyShareError(f"not a {what} (magic {m!r}, version {ver})")
    return int(party)


@dataclass(frozen=True)
class Shamir:
    """A point of a Shamir polynomial over the ring: ``threshold`` of ``parties`` recover it."""

    threshold: int
    parties: tuple[int, ...]
    residues: np.ndarray  # [K, N] uint64, NTT form


def _write_shamir(st: Shamir) -> bytes:
    k, n = st.residues.shape
    return (
        struct.pack("<HH", st.threshold, len(st.parties))
        + np.asarray(st.parties, dtype="<u4").tobytes()
        + struct.pack("<HI", k, n)
        + np.ascontiguousarray(st.residues, dtype="<u8").tobytes()
    )


def _read_shamir(buf: bytes, pos: int, what: str, party: int) -> tuple[Shamir, int]:
    if len(buf) < pos + 4:
        raise KeyShareError(f"{what} cut short", party)
    t, n_parties = struct.unpack_from("<HH", buf, pos)
    pos += 4
    if len(buf) < pos + 4 * n_parties + 6:
        raise KeyShareError(f"{what} cut short", party)
    parties = tuple(int(p) for p in np.frombuffer(buf, "<u4", n_parties, pos))
    pos += 4 * n_parties
    k, n = struct.unpack_from("<HI", buf, pos)
    pos += 6
    if not 1 <= t <= n_parties or len(buf) < pos + 8 * k * n or k * n == 0:
        raise KeyShareError(f"{what}: threshold {t} of {n_parties}, K={k}, N={n} malformed", party)
    res = np.frombuffer(buf, "<u8", k * n, pos).reshape(k, n).astype(np.uint64)
    return Shamir(int(t), parties, res), pos + 8 * k * n


def write_key(party: int, preset: str, seed: bytes, shamir: Shamir | None = None) -> bytes:
    name = preset.encode()
    out = _HEAD.pack(KEY_MAGIC, VERSION, party) + bytes([len(name)]) + name + seed
    return out + (_write_shamir(shamir) if shamir is not None else b"")


def read_key(buf: bytes) -> tuple[int, str, bytes, Shamir | None]:
    """``(party, preset name, seed, Shamir state or None)`` of a key file."""
    party = _head(buf, KEY_MAGIC, "key share file")
    preset, pos = _name(buf, _HEAD.size, "key share file", party)
    seed = buf[pos : pos + SEED_BYTES]
    if len(seed) != SEED_BYTES:
        raise KeyShareError(f"key share file holds a {len(seed)}-byte seed; expected 32", party)
    pos += SEED_BYTES
    if pos == len(buf):
        return party, preset, seed, None
    st, end = _read_shamir(buf, pos, "key share file", party)
    if end != len(buf):
        raise KeyShareError("key share file has trailing bytes", party)
    return party, preset, seed, st


_DEALT = struct.Struct("<4sBII")


def write_dealt(dealer: int, recipient: int, preset: str, st: Shamir) -> bytes:
    name = preset.encode()
    head = _DEALT.pack(DEALT_MAGIC, VERSION, dealer, recipient)
    return head + _write_shamir(st) + bytes([len(name)]) + name


def read_dealt(buf: bytes) -> tuple[int, int, str, Shamir]:
    """``(dealer, recipient, preset name, Shamir point)`` of a dealt share."""
    if len(buf) < _DEALT.size:
        raise KeyShareError(f"dealt share of {len(buf)} bytes is shorter than its header")
    magic, ver, dealer, recipient = _DEALT.unpack_from(buf, 0)
    if magic != DEALT_MAGIC or ver != VERSION:
        raise KeyShareError(f"not a dealt share (magic {magic!r}, version {ver})")
    st, pos = _read_shamir(buf, _DEALT.size, f"dealt share of party {dealer}", dealer)
    preset, end = _name(buf, pos, f"dealt share of party {dealer}", dealer)
    if end != len(buf):
        raise KeyShareError(f"dealt share of party {dealer} has trailing bytes", dealer)
    return int(dealer), int(recipient), preset, st


@dataclass(frozen=True)
class PublicShare:
    party: int
    crs: bytes
    primes: tuple[int, ...]
    residues: np.ndarray  # [K, N] uint64


_SHARE = struct.Struct("<32sHI")


def write_public_share(party: int, crs: bytes, primes: tuple[int, ...], res: np.ndarray) -> bytes:
    k, n = res.shape
    return (
        _HEAD.pack(SHARE_MAGIC, VERSION, party)
        + _SHARE.pack(crs, k, n)
        + np.asarray(primes, dtype="<u8").tobytes()
        + np.ascontiguousarray(res, dtype="<u8").tobytes()
    )


def read_public_share(buf: bytes) -> PublicShare:
    """Parse a public share; :class:`KeyShareError` naming the party if malformed."""
    party = _head(buf, SHARE_MAGIC, "public share")
    if len(buf) < _HEAD.size + _SHARE.size:
        raise KeyShareError(f"public share of party {party} cut short", party)
    crs, k, n = _SHARE.unpack_from(buf, _HEAD.size)
    pos = _HEAD.size + _SHARE.size
    if not 1 <= k <= 64 or n not in (1024, 2048, 4096, 8192, 16384, 32768):
        raise KeyShareError(f"public share of party {party}: K={k}, N={n} not a CKKS key", party)
    if len(buf) != pos + 8 * k + 8 * k * n:
        raise KeyShareError(
            f"public share of party {party} holds {len(buf)} bytes; K={k}, N={n} need "
            f"{pos + 8 * k + 8 * k * n}",
            party,
        )
    primes = tuple(int(q) for q in np.frombuffer(buf, "<u8", k, pos))
    res = np.frombuffer(buf, "<u8", k * n, pos + 8 * k).reshape(k, n).astype(np.uint64)
    if (res >= np.array(primes, dtype=np.uint64)[:, None]).any():
        raise KeyShareError(f"public share of party {party}: a residue is not reduced", party)
    return PublicShare(int(party), bytes(crs), primes, res)


def commitment(share: bytes) -> bytes:
    """The 32-byte commitment to a public share (it names its party and CRS itself)."""
    return hashlib.sha3_256(b"bcfl-mp-commit\x00" + share).digest()


@dataclass(frozen=True)
class DecryptionShare:
    party: int
    c1_digest: bytes
    active: tuple[int, ...]
    preset: str
    residues: np.ndarray  # [C, K, N] uint64


_DEC = struct.Struct("<IHI")


def write_decryption_share(s: DecryptionShare) -> bytes:
    c, k, n = s.residues.shape
    name = s.preset.encode()
    return b"".join(
        [
            _HEAD.pack(DEC_MAGIC, VERSION, s.party),
            s.c1_digest,
            struct.pack("<H", len(s.active)),
            np.asarray(s.active, dtype="<u4").tobytes(),
            bytes([len(name)]) + name,
            _DEC.pack(c, k, n),
            np.ascontiguousarray(s.residues, dtype="<u8").tobytes(),
        ]
    )


def read_decryption_share(buf: bytes) -> DecryptionShare:
    """Parse a decryption share; :class:`KeyShareError` naming the party if malformed."""
    party = _head(buf, DEC_MAGIC, "decryption share")
    pos = _HEAD.size
    if len(buf) < pos + 34:
        raise KeyShareError(f"decryption share of party {party} cut short", party)
    digest = bytes(buf[pos : pos + 32])
    (na,) = struct.unpack_from("<H", buf, pos + 32)
    pos += 34
    if len(buf) < pos + 4 * na:
        raise KeyShareError(f"decryption share of party {party} cut short", party)
    active = tuple(int(a) for a in np.frombuffer(buf, "<u4", na, pos))
    preset, pos = _name(buf, pos + 4 * na, "decryption share", party)
    if len(buf) < pos + _DEC.size:
        raise KeyShareError(f"decryption share of party {party} cut short", party)
    c, k, n = _DEC.unpack_from(buf, pos)
    pos += _DEC.size
    if len(buf) != pos + 8 * c * k * n or c * k * n == 0:
        raise KeyShareError(
            f"decryption share of party {party}: {len(buf) - pos} residue bytes for C={c}, K={k}, N={n}",
            party,
        )
    res = np.frombuffer(buf, "<u8", c * k * n, pos).reshape(c, k, n).astype(np.uint64)
    return DecryptionShare(int(party), digest, active, preset, res)


def public_context(template: bytes, pk: np.ndarray, key_parms_id: tuple[int, ...]) -> bytes:
    """``template`` (a public-only TenSEAL context of the same parameters) with its public key
    replaced by the size-2 key-level ciphertext ``pk`` ``[2, K, N]``."""
    buf = memoryview(template)
    out = bytearray()
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        if tag & 7 != 2:
            raise KeyShareError(
                f"unexpected TenSEAL context field {tag >> 3} (wire type {tag & 7})"
            )
        length, pos = _varint(buf, pos)
        if tag >> 3 != 2:
            out += buf[start : pos + length]
        else:
            inner = _replace_key(buf[pos : pos + length], pk, key_parms_id)
            out.append(tag)
            _put_varint(out, len(inner))
            out += inner
        pos += length
    return bytes(out)


def _replace_key(buf: memoryview, pk: np.ndarray, key_parms_id: tuple[int, ...]) -> bytes:
    out = bytearray()
    pos = 0
    while pos < len(buf):
        start = pos
        tag, pos = _varint(buf, pos)
        if tag == (1 << 3 | 2):
            length, pos = _varint(buf, pos)
            (major, minor) = SEAL_HEADER.unpack_from(buf, pos)[2:4]
            key = write_seal_ciphertext(pk, key_parms_id, 1.0, (major, minor))
            out.append(tag)
            _put_varint(out, len(key))
            out += key
            pos += length
            continue
        wt = tag & 7
        if wt == 0:
            _, pos = _varint(buf, pos)
        elif wt == 1:
            pos += 8
        elif wt == 2:
            length, pos = _varint(buf, pos)
            pos += length
        else:
            raise KeyShareError(f"unexpected public-context wire type {wt}")
        out += buf[start:pos]
    return bytes(out)


def read_log(
    path: Path, party: int
) -> tuple[dict[bytes, tuple[int, ...]], dict[bytes, dict[str, str]]]:
    """A party's decryption log (one JSON line per ``c1`` it shared: ``{c1, active[, dp]}``):
    the active set of each ``c1``, and the DP noise of those that carry one. KeyShareError
    naming the party for a corrupt line."""
    log: dict[bytes, tuple[int, ...]] = {}
    dp_log: dict[bytes, dict[str, str]] = {}
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
            log[bytes.fromhex(entry["c1"])] = tuple(int(a) for a in entry["active"])
            if entry.get("dp") is not None:
                dp_log[bytes.fromhex(entry["c1"])] = dict(entry["dp"])
        except (ValueError, KeyError, TypeError):
            raise KeyShareError(
                f"party {party}: decryption log {path} line {number} is corrupt", party
            ) from None
    return log, dp_log


def append_log(path: Path, entry: dict[str, Any]) -> None:
    """Append one entry to a decryption log, durably (0600, fsynced) before the share leaves."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, (json.dumps(entry) + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)
