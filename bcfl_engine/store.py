"""The payload store on disk: what makes a round survive an aggregator crash.

Every payload a round accepts is written here before it is acknowledged, with the round's
acceptance record (client, digest, weight, salt, signature): payloads that arrive together go
into one group of the round's append-only log, made durable with one fsync
(:mod:`bcfl_engine.round_log` owns that format). Single objects (a round's result, its
metadata, a CKKS context) are content-addressed files named by their digest, each written to a
temporary name in the same folder, fsynced, renamed over its final name and the folder fsynced.
Whatever moment the process dies at, a file is absent or complete and a log holds whole groups
only. A restarted :class:`~bcfl_engine.round.AggregationRound` reads the records back and
resumes; an auditor opens the store read-only (``readonly=True``: it creates, repairs and
deletes nothing) and reads the same files to recompute a committed round.

Layout::

    root/objects/<2 hex>/<62 hex>              result, metadata, context: bytes named by digest
    root/rounds/<task>/<round>/accepted.log    groups: records + payloads, one fsync each
    root/rounds/<task>/<round>/round.json      what was committed (root, digests, meta)

A store written before the log existed keeps each record in
``rounds/<task>/<round>/accepted/<client>.json`` and each payload under ``objects/``; those
are still read (before the log's records), never written.

``<task>`` is the task's key on its chain (:func:`bcfl_engine.protocol.task_key`:
``<id>-<chain id>-<registry>-<block>``), so two runs that get the same task id from two
deployments never share records. A plain task id is accepted too: it names the folder of that
id if one exists, else the most recently written run of that id (what a caller that knows only
the id, such as ``bcfl audit --task``, can ask for).
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from . import protocol
from .errors import InvalidArgument, PayloadError
from .round_log import RoundLog

_TMP_PREFIX = ".tmp-"
STALE_TMP_SECONDS = 15 * 60
"""A temporary file older than this is a crash's leftover, not another writer's file in flight."""
_SAFE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


def _fsync_dir(path: Path) -> None:
    # A rename is durable only once its directory entry is: fsync the folder too (POSIX).
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that a crash leaves either no file or the whole file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def _name(value: object, what: str) -> str:
    """``value`` as a path component; only names that cannot escape their folder."""
    text = str(value)
    if not _SAFE.match(text) or text in (".", ".."):
        raise InvalidArgument(f"{what} must match [A-Za-z0-9_.-]{{1,128}}; got {text!r}")
    return text


def _hex(digest: bytes | str) -> str:
    if isinstance(digest, str):
        text = digest.removeprefix("0x").lower()
        if not re.fullmatch(r"[0-9a-f]{64}", text):
            raise InvalidArgument(f"a digest is 32 bytes (64 hex digits); got {digest!r}")
        return text
    if not isinstance(digest, bytes) or len(digest) != 32:
        raise InvalidArgument(f"a digest is 32 bytes; got {digest!r}")
    return digest.hex()


class PayloadStore:
    """Payloads by digest and per-round records, in the folder ``root``.

    Parameters
    ----------
    root : path
        The store's folder, created if missing (unless ``readonly``).
    readonly : bool
        Open for reading only (an audit): nothing is created, repaired or deleted, and every
        write raises InvalidArgument. A writer removes on open the temporary files a crash
        left behind, those older than :data:`STALE_TMP_SECONDS` only: a younger one may be
        another process's write in flight.
    """

    def __init__(self, root: str | os.PathLike[str], *, readonly: bool = False) -> None:
        self.root = Path(root)
        self.readonly = readonly
        self._logs: dict[Path, RoundLog] = {}
        if readonly:
            return
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "rounds").mkdir(parents=True, exist_ok=True)
        self.sweep()

    def sweep(self, older_than: float = STALE_TMP_SECONDS) -> int:
        """Remove temporary files older than ``older_than`` seconds; return how many."""
        self._writable()
        cutoff, removed = time.time() - older_than, 0
        for tmp in self.root.rglob(f"{_TMP_PREFIX}*"):
            try:
                if tmp.stat().st_mtime < cutoff:
                    tmp.unlink()
                    removed += 1
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
        return removed

    def _writable(self) -> None:
        if self.readonly:
            raise InvalidArgument(f"the store {self.root} is open read-only")

    def __repr__(self) -> str:
        ro = ", readonly=True" if self.readonly else ""
        return f"PayloadStore({str(self.root)!r}{ro})"

    # ---- payloads ------------------------------------------------------------------------

    def path(self, digest: bytes | str) -> Path:
        """Where the payload of ``digest`` lives."""
        h = _hex(digest)
        return self.root / "objects" / h[:2] / h[2:]

    def put(self, data: bytes, *, digest: bytes | None = None) -> bytes:
        """Store ``data`` durably; return its digest. Storing it again is a no-op.

        ``digest``, when the caller already holds it (:func:`~bcfl_engine.protocol.payload_digest`
        of ``data``), saves hashing the bytes again. An object already present with the same
        size is not read back: :meth:`get` and the audit check the bytes against their name.
        """
        self._writable()
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"a payload is bytes; got {type(data).__name__}")
        if digest is None:
            digest = protocol.payload_digest(data)
        path = self.path(digest)
        size = memoryview(data).nbytes
        try:
            present = path.stat().st_size == size
        except FileNotFoundError:
            present = False
        if not present:
            atomic_write(path, data if isinstance(data, bytes) else bytes(data))
        return bytes.fromhex(_hex(digest))

    def has(self, digest: bytes | str) -> bool:
        return self.path(digest).exists()

    def get(
        self,
        digest: bytes | str,
        *,
        verify: bool = True,
        hasher: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """The payload of ``digest``.

        Raises PayloadError when it is missing or, with ``verify``, when the stored bytes no
        longer hash to ``digest`` (the file was altered) under ``hasher``:
        :func:`~bcfl_engine.protocol.payload_digest` unless given (the metadata is named by
        :func:`~bcfl_engine.protocol.meta_hash`, an older round's payloads by keccak-256).
        """
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PayloadError(
                f"payload 0x{_hex(digest)} is not in the store {self.root}"
            ) from None
        if verify:
            got = (hasher or protocol.payload_digest)(data)
            if got != bytes.fromhex(_hex(digest)):
                raise PayloadError(
                    f"stored payload 0x{_hex(digest)} was altered: its bytes hash to 0x{got.hex()}"
                )
        return data

    # ---- round records -------------------------------------------------------------------

    def _task_dir(self, task: object) -> Path:
        name = _name(task, "task")
        exact = self.root / "rounds" / name
        if not isinstance(task, int) or isinstance(task, bool) or exact.is_dir():
            return exact
        runs = [p for p in (self.root / "rounds").glob(f"{name}-*") if p.is_dir()]
        return max(runs, key=lambda p: p.stat().st_mtime_ns) if runs else exact

    def round_dir(self, task: object, round: int) -> Path:
        if not isinstance(round, int) or isinstance(round, bool) or round < 0:
            raise InvalidArgument(f"round must be an int >= 0; got {round!r}")
        return self._task_dir(task) / str(round)

    def log(self, task: object, round: int) -> RoundLog:
        """The log of a round's groups (opened once per store: a writer repairs a torn tail)."""
        path = self.round_dir(task, round) / "accepted.log"
        log = self._logs.get(path)
        if log is None:
            log = self._logs[path] = RoundLog(path, readonly=self.readonly)
        return log

    def append(
        self,
        task: object,
        round: int,
        records: Sequence[dict[str, Any]],
        payloads: Sequence[bytes | memoryview],
    ) -> None:
        """Durably record one group of accepted payloads of ``round`` of ``task`` (one fsync):
        ``records[i]`` is the acceptance record of ``payloads[i]``."""
        self._writable()
        self.log(task, round).append(records, payloads)

    def accepted(
        self, task: object, round: int, *, problems: list[str] | None = None
    ) -> list[dict[str, Any]]:
        """The acceptance records of a round, in the order they were written.

        A damaged record (a file that is not JSON, a log group that fails its check) raises
        PayloadError, or, given a ``problems`` list, is named there and left out (the audit
        reports it and goes on). Records are parsed, not checked
        (see :func:`~bcfl_engine.protocol.check_acceptance`).
        """
        out = []
        folder = self.round_dir(task, round) / "accepted"
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                out.append(json.loads(path.read_bytes()))
            except (OSError, ValueError) as exc:
                message = f"unreadable acceptance record {path}: {exc}"
                if problems is None:
                    raise PayloadError(message) from None
                problems.append(message)
        log = self.log(task, round)
        if log.problems:
            if problems is None:
                raise PayloadError(log.problems[0])
            problems.extend(log.problems)
        return out + log.records

    def payload(
        self,
        task: object,
        round: int,
        digest: bytes | str,
        *,
        hasher: Callable[[bytes], bytes] | None = None,
    ) -> bytes:
        """The payload of ``digest`` accepted in ``round`` of ``task`` (from the round's log, or
        ``objects/`` for a store written before it). PayloadError when it is missing or, given
        ``hasher``, when its bytes no longer hash to ``digest``."""
        h = _hex(digest)
        log = self.log(task, round)
        if log.locate(h) is not None:
            return log.payload(h, hasher=hasher)
        return self.get(h, verify=hasher is not None, hasher=hasher)

    def write_round(self, task: object, round: int, record: dict[str, Any]) -> None:
        """Record what was committed for a round (``round.json``)."""
        self._writable()
        path = self.round_dir(task, round) / "round.json"
        atomic_write(path, json.dumps(record, sort_keys=True, indent=1).encode())

    def read_round(
        self, task: object, round: int, *, problems: list[str] | None = None
    ) -> dict[str, Any] | None:
        """The committed record of a round (a JSON object, its fields not checked), or None.

        A file that is not a JSON object raises PayloadError, or, given ``problems``, is named there
        and None is returned.
        """
        path = self.round_dir(task, round) / "round.json"
        if not path.exists():
            return None
        try:
            record = json.loads(path.read_bytes())
            if not isinstance(record, dict):
                raise ValueError(f"expected a JSON object; got {type(record).__name__}")
            return record
        except (OSError, ValueError) as exc:
            message = f"unreadable round record {path}: {exc}"
            if problems is None:
                raise PayloadError(message) from None
            problems.append(message)
            return None
