"""A content-addressed payload store on disk: what makes a round survive an aggregator crash.

Every payload a round accepts is written here before it is acknowledged, under its keccak-256
digest (``objects/ab/cdef...``), and the round's acceptance record (client, digest, weight,
salt, signature) next to it (``rounds/<task>/<round>/accepted/<client>.json``). Each file is
written to a temporary name in the same folder, fsynced, renamed over its final name and the
folder fsynced, so a file is either absent or complete whatever moment the process dies at.
A restarted :class:`~bcfl_engine.round.AggregationRound` reads the records back and resumes;
an auditor reads the same files to recompute a committed round.

Layout::

    root/objects/<2 hex>/<62 hex>               payload bytes, named by keccak256(bytes)
    root/rounds/<task>/<round>/accepted/<client>.json
    root/rounds/<task>/<round>/round.json       what was committed (root, digests, meta)
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from .errors import InvalidArgument, PayloadError
from .updates import keccak256

_TMP_PREFIX = ".tmp-"
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
    """Payloads by digest and per-round records, in the folder ``root`` (created if missing).

    Parameters
    ----------
    root : path
        The store's folder. Temporary files a crash left behind are removed on open.
    """

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        (self.root / "objects").mkdir(parents=True, exist_ok=True)
        (self.root / "rounds").mkdir(parents=True, exist_ok=True)
        for tmp in self.root.rglob(f"{_TMP_PREFIX}*"):
            tmp.unlink(missing_ok=True)

    def __repr__(self) -> str:
        return f"PayloadStore({str(self.root)!r})"

    # ---- payloads ------------------------------------------------------------------------

    def path(self, digest: bytes | str) -> Path:
        """Where the payload of ``digest`` lives."""
        h = _hex(digest)
        return self.root / "objects" / h[:2] / h[2:]

    def put(self, data: bytes) -> bytes:
        """Store ``data`` durably; return its keccak-256 digest. Storing it twice is a no-op."""
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise InvalidArgument(f"a payload is bytes; got {type(data).__name__}")
        data = bytes(data)
        digest = keccak256(data)
        path = self.path(digest)
        if not path.exists() or keccak256(path.read_bytes()) != digest:
            atomic_write(path, data)
        return digest

    def has(self, digest: bytes | str) -> bool:
        return self.path(digest).exists()

    def get(self, digest: bytes | str, *, verify: bool = True) -> bytes:
        """The payload of ``digest``.

        Raises PayloadError when it is missing or, with ``verify``, when the stored bytes no
        longer hash to ``digest`` (the file was altered).
        """
        path = self.path(digest)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise PayloadError(
                f"payload 0x{_hex(digest)} is not in the store {self.root}"
            ) from None
        if verify:
            got = keccak256(data)
            if got != bytes.fromhex(_hex(digest)):
                raise PayloadError(
                    f"stored payload 0x{_hex(digest)} was altered: its bytes hash to 0x{got.hex()}"
                )
        return data

    # ---- round records -------------------------------------------------------------------

    def round_dir(self, task: object, round: int) -> Path:
        if not isinstance(round, int) or isinstance(round, bool) or round < 0:
            raise InvalidArgument(f"round must be an int >= 0; got {round!r}")
        return self.root / "rounds" / _name(task, "task") / str(round)

    def accept(self, task: object, round: int, client: str, record: dict[str, Any]) -> None:
        """Durably record that ``client``'s payload was accepted in ``round`` of ``task``."""
        path = self.round_dir(task, round) / "accepted" / f"{_name(client, 'client')}.json"
        atomic_write(path, json.dumps(record, sort_keys=True).encode())

    def accepted(self, task: object, round: int) -> list[dict[str, Any]]:
        """The acceptance records of a round, sorted by client name."""
        folder = self.round_dir(task, round) / "accepted"
        if not folder.is_dir():
            return []
        out = []
        for path in sorted(folder.glob("*.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, ValueError) as exc:
                raise PayloadError(f"unreadable acceptance record {path}: {exc}") from None
        return out

    def write_round(self, task: object, round: int, record: dict[str, Any]) -> None:
        """Record what was committed for a round (``round.json``)."""
        path = self.round_dir(task, round) / "round.json"
        atomic_write(path, json.dumps(record, sort_keys=True, indent=1).encode())

    def read_round(self, task: object, round: int) -> dict[str, Any] | None:
        """The committed record of a round, or None if the round was not committed."""
        path = self.round_dir(task, round) / "round.json"
        if not path.exists():
            return None
        try:
            return dict(json.loads(path.read_text()))
        except ValueError as exc:
            raise PayloadError(f"unreadable round record {path}: {exc}") from None
