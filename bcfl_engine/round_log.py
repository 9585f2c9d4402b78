"""A round's accepted payloads and their records, one append-only file, one fsync per group.

Payloads that arrive together (a Flower round, a burst of submits) are written as one *group*:
one frame appended to the round's log and made durable with one ``fdatasync``. A submit is
acknowledged only after its group is durable; a single submit is a group of one.

Frame layout (little-endian)::

    offset 0    magic       8 bytes   b"bcflgrp1"
    offset 8    head_len    u32       length of the JSON head
    offset 12   body_len    u64       total length of the payloads
    offset 20   head        JSON      {"digest": name, "records": [record, ...], "sizes": [int, ...]}
    ...         body        bytes     the payloads, in record order, back to back
    ...         check       32 bytes  BLAKE3-256 of magic .. end of head

The check covers the records (each names its payload's digest, under the digest function the
head names: :func:`bcfl_engine.protocol.digest_function`), so the payload bytes are checked by
their digests where they are read (a restarted round, the audit). Only the last
frame can be torn: a crash mid-group leaves a frame that is short (the file ends inside it) or,
after a power loss, whose check or payloads do not match. A writer that opens the log drops such
a tail (it was never acknowledged); a reader ignores a short or unchecked one and keeps one
whose payloads do not match (the audit names them). A bad frame that is *not* the last one
is damage, not a crash: a writer refuses to append (PayloadError naming the offset) and a reader
reports it and keeps the frames before it.

Writers take an exclusive ``flock`` on the file for each append and for the tail repair, so a
second process opening the same round waits for a group in flight instead of cutting it off; a
writer whose view of the file is stale (another process appended since) is refused.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import struct
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from blake3 import blake3

from . import protocol
from .errors import InvalidArgument, PayloadError

MAGIC = b"bcflgrp1"
_PREFIX = struct.Struct("<8sIQ")  # magic, head_len, body_len
CHECK_SIZE = 32
MAX_HEAD = 1 << 30
_IOV_MAX = min(os.sysconf("SC_IOV_MAX") if hasattr(os, "sysconf") else 1024, 1024)


def _check(prefix_and_head: bytes) -> bytes:
    return blake3(prefix_and_head).digest()


def encode_head(records: Sequence[dict[str, Any]], sizes: Sequence[int]) -> bytes:
    """The JSON head of a frame: the payload digest's name (today's), records, sizes."""
    head = {"digest": protocol.DIGEST, "records": list(records), "sizes": list(sizes)}
    return json.dumps(head, separators=(",", ":")).encode()


def frame_chunks(
    records: Sequence[dict[str, Any]], payloads: Sequence[bytes | memoryview]
) -> list[bytes | memoryview]:
    """The byte chunks of one frame, in order (the payloads are not copied)."""
    sizes = [memoryview(p).nbytes for p in payloads]
    head = encode_head(records, sizes)
    prefix = _PREFIX.pack(MAGIC, len(head), sum(sizes))
    return [prefix + head, *payloads, _check(prefix + head)]


def _zeros(fd: int, offset: int, size: int) -> bool:
    while offset < size:
        chunk = os.pread(fd, min(size - offset, 1 << 20), offset)
        if not chunk or chunk.count(0) != len(chunk):
            return not chunk
        offset += len(chunk)
    return True


class Frame:
    """One group as read back: its records and where each payload lies in the file."""

    __slots__ = ("digest", "end", "offset", "records", "spans")

    def __init__(
        self,
        offset: int,
        records: list[dict[str, Any]],
        spans: list[tuple[int, int]],
        end: int,
        digest: object = None,
    ) -> None:
        self.offset, self.records, self.spans, self.end = offset, records, spans, end
        self.digest = digest  # the name of the payload digest the head gives


def _read_frame(fd: int, offset: int, size: int) -> tuple[Frame | None, str, int]:
    """The frame at ``offset`` of a file of ``size`` bytes, else None, why not, and where the
    bad frame says it ends (``size`` when it cannot say)."""
    if size - offset < _PREFIX.size:
        return None, f"{size - offset} bytes, less than a frame's prefix", size
    prefix = os.pread(fd, _PREFIX.size, offset)
    magic, head_len, body_len = _PREFIX.unpack(prefix)
    if magic != MAGIC:
        # Zeros to the end are what a power loss leaves of an unsynced group; else damage.
        return None, f"bad magic {magic!r}", size if _zeros(fd, offset, size) else offset + 1
    start = offset + _PREFIX.size
    end = start + head_len + body_len + CHECK_SIZE
    if head_len > MAX_HEAD or end > size:
        return None, f"the frame needs {end - offset} bytes, the file has {size - offset}", size
    head = os.pread(fd, head_len, start)
    if _check(prefix + head) != os.pread(fd, CHECK_SIZE, end - CHECK_SIZE):
        return None, "its check does not match its records", end
    try:
        obj = json.loads(head)
        records, sizes = obj["records"], obj["sizes"]
        if not (
            isinstance(records, list)
            and isinstance(sizes, list)
            and len(records) == len(sizes)
            and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in sizes)
            and sum(sizes) == body_len
        ):
            raise ValueError("records and sizes do not match the body")
    except (ValueError, KeyError, TypeError) as exc:
        return None, f"unreadable head: {exc}", end
    spans, at = [], start + head_len
    for s in sizes:
        spans.append((at, s))
        at += s
    return Frame(offset, records, spans, end, obj.get("digest")), "", end


class RoundLog:
    """The log file of one round (see the module docstring).

    Parameters
    ----------
    path : the log file (created on the first append)
    readonly : read only: nothing is created, repaired or locked; a damaged group is named in
        :attr:`problems` and the groups before it are kept (a writer raises PayloadError)
    """

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.readonly = readonly
        self.frames: list[Frame] = []
        self._where: dict[str, tuple[int, int]] = {}  # digest hex -> (offset, size)
        self.end = 0
        self.dropped = 0  # bytes of a torn last group dropped (writer) or ignored (reader)
        self.problems: list[str] = []
        self._new = False  # created by this writer, its directory entry not yet synced
        if readonly:
            if self.path.exists():
                fd = os.open(self.path, os.O_RDONLY)
                try:
                    self._scan(fd, os.fstat(fd).st_size)
                finally:
                    os.close(fd)
            return
        if self.path.exists():
            fd = os.open(self.path, os.O_RDWR)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # wait for a group another writer has in flight
                size = os.fstat(fd).st_size
                self._scan(fd, size)
                if self.end < size:  # a torn, never acknowledged group: drop it
                    os.ftruncate(fd, self.end)
                    os.fsync(fd)
            finally:
                os.close(fd)  # closing releases the lock

    def _scan(self, fd: int, size: int) -> None:
        offset = 0
        while offset < size:
            frame, why, end = _read_frame(fd, offset, size)
            if frame is not None and frame.end < size:
                self._index(frame)  # not the last: its payloads are checked where read
            elif frame is not None and (self.readonly or self._payloads_ok(fd, frame)):
                # A reader keeps it: an altered payload is the audit's finding, by its digest.
                self._index(frame)
            else:
                # The last group, torn by a crash (never acknowledged), ends at the file's
                # end; a bad group with bytes after it is damage.
                why = why or "its payloads do not match their digests"
                if end < size:
                    message = (
                        f"round log {self.path}: the group at byte {offset} is damaged ({why})"
                    )
                    if not self.readonly:
                        raise PayloadError(message)
                    self.problems.append(message)
                elif frame is not None:
                    # Whole records, payloads that do not match: a power loss before the
                    # group was acknowledged, or damage to an acknowledged one. Dropped either
                    # way (the bytes are unusable); said aloud, since the second loses data.
                    warnings.warn(
                        f"round log {self.path}: dropped its last group ({len(frame.records)} "
                        f"payloads at byte {offset}): {why}; a crash before it was "
                        "acknowledged, or damage (its clients must send again)",
                        RuntimeWarning,
                        stacklevel=4,
                    )
                self.dropped = size - offset
                return
            offset = frame.end

    def _payloads_ok(self, fd: int, frame: Frame) -> bool:
        """Whether the last frame's payloads hash to their digests (a torn tail otherwise)."""
        try:
            payload_digest = protocol.digest_function(str(frame.digest))
        except PayloadError:
            return True  # a digest this engine does not know: kept, for the audit to name
        for record, (at, n) in zip(frame.records, frame.spans, strict=True):
            digest = record.get("digest") if isinstance(record, dict) else None
            if isinstance(digest, str) and payload_digest(os.pread(fd, n, at)).hex() != digest:
                return False  # (a record without a digest is the audit's finding, not a tear)
        return True

    def _index(self, frame: Frame) -> None:
        self.frames.append(frame)
        for record, span in zip(frame.records, frame.spans, strict=True):
            digest = record.get("digest") if isinstance(record, dict) else None
            if isinstance(digest, str):
                self._where.setdefault(digest, span)
        self.end = frame.end

    # ---- reading -----------------------------------------------------------------------------

    @property
    def records(self) -> list[Any]:
        """Every record of the log's intact groups, in the order they were appended."""
        return [r for frame in self.frames for r in frame.records]

    def locate(self, digest: str) -> tuple[int, int] | None:
        """``(offset, size)`` of the payload of ``digest`` (hex) in the file, or None."""
        return self._where.get(digest)

    def payload(self, digest: str, *, hasher: Callable[[bytes], bytes] | None = None) -> bytes:
        """The payload of ``digest`` (hex); with ``hasher``, PayloadError unless its bytes hash
        to ``digest``."""
        span = self._where.get(digest)
        if span is None:
            raise PayloadError(f"payload 0x{digest} is not in the round log {self.path}")
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), span[1], span[0])
        if len(data) != span[1]:
            raise PayloadError(f"payload 0x{digest} is cut short in the round log {self.path}")
        if hasher is not None and (got := hasher(data)).hex() != digest:
            raise PayloadError(
                f"stored payload 0x{digest} was altered: its bytes hash to 0x{got.hex()}"
            )
        return data

    # ---- writing -----------------------------------------------------------------------------

    def append(
        self,
        records: Sequence[dict[str, Any]],
        payloads: Sequence[bytes | memoryview],
        *,
        sync: bool = True,
    ) -> None:
        """Append one frame and, with ``sync``, make it durable (one ``fdatasync``) before
        returning. ``sync=False`` lets a caller write a group as several frames and make them
        durable together with :meth:`sync` (or drop them with :meth:`rollback`); the frames are
        read back (in memory and after a restart) like any other, so nothing may be
        acknowledged before that :meth:`sync`."""
        if self.readonly:
            raise InvalidArgument(f"the round log {self.path} is open read-only")
        if len(records) != len(payloads) or not records:
            raise InvalidArgument("a group holds one or more records, one payload each")
        chunks = frame_chunks(records, payloads)
        if not self.path.exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._new = True  # its directory entry is synced with the group
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            size = os.fstat(fd).st_size
            if size != self.end:
                raise PayloadError(
                    f"the round log {self.path} changed under this writer ({size} bytes, "
                    f"{self.end} expected): another process appended to it; reopen the round"
                )
            try:
                _write_all(fd, chunks, self.end)
                if sync:
                    os.fdatasync(fd)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, self.end)  # nothing half-written stays behind
                raise
        finally:
            os.close(fd)  # closing releases the lock
        if sync:
            self._sync_dir()
        start = self.end + len(chunks[0])
        spans = []
        for p in payloads:
            n = memoryview(p).nbytes
            spans.append((start, n))
            start += n
        self._index(Frame(self.end, list(records), spans, start + CHECK_SIZE, protocol.DIGEST))

    def create(self) -> None:
        """Create the (empty) log file and make its directory entry durable now, so that the
        first group pays only for its own bytes. Nothing if it exists."""
        if self.readonly:
            raise InvalidArgument(f"the round log {self.path} is open read-only")
        if self.path.exists():
            return
        new = [p for p in self.path.parents if not p.exists()]  # folders this makes
        self.path.parent.mkdir(parents=True, exist_ok=True)
        os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT, 0o644))
        for folder in [self.path.parent, *(p.parent for p in new)]:  # each new entry's folder
            _fsync_dir(folder)

    def sync(self) -> None:
        """Make every frame appended so far durable (one ``fdatasync``)."""
        fd = os.open(self.path, os.O_WRONLY)
        try:
            os.fdatasync(fd)
        finally:
            os.close(fd)
        self._sync_dir()

    def _sync_dir(self) -> None:
        if self._new:
            _fsync_dir(self.path.parent)
            self._new = False

    def rollback(self, end: int) -> None:
        """Drop the frames from byte ``end`` on (appended with ``sync=False``, never
        acknowledged), from the file and from memory."""
        if end < self.end:
            with contextlib.suppress(FileNotFoundError):
                os.truncate(self.path, end)
            while self.frames and self.frames[-1].offset >= end:
                frame = self.frames.pop()
                for record in frame.records:
                    digest = record.get("digest") if isinstance(record, dict) else None
                    if isinstance(digest, str) and self._where.get(digest, (-1, 0))[0] >= end:
                        del self._where[digest]
            self.end = end


def _write_all(fd: int, chunks: Sequence[bytes | memoryview], offset: int) -> None:
    """Write ``chunks`` at ``offset`` with as few system calls as the kernel allows."""
    views = [memoryview(c).cast("B") for c in chunks if memoryview(c).nbytes]
    i = 0
    while i < len(views):
        batch = views[i : i + _IOV_MAX]
        written = os.pwritev(fd, batch, offset)
        offset += written
        # Skip what was written; a partial write leaves the rest of one chunk.
        while batch and written >= batch[0].nbytes:
            written -= batch[0].nbytes
            batch.pop(0)
            i += 1
        if written:
            views[i] = views[i][written:]


def _fsync_dir(path: Path) -> None:
    # A new file is durable only once its directory entry is: fsync the folder too (POSIX).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
