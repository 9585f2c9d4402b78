"""What an attacker with write access to an aggregator's store does to it, for the audit tests.

A round's payloads and records live in its log (:mod:`bcfl_engine.round_log`). Flipping bytes
of a payload in place keeps every group's check; editing a record or a payload's length means
rewriting the log with fresh checks, as a careful attacker would (the format is public).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from bcfl_engine.round_log import RoundLog, frame_chunks
from bcfl_engine.store import PayloadStore

Entries = list[tuple[dict[str, Any], bytes]]


def log_path(store: PayloadStore, key: object, round: int) -> Path:
    return store.round_dir(key, round) / "accepted.log"


def read_log(path: Path) -> Entries:
    """Every (record, payload) of the log's intact groups, in order."""
    log = RoundLog(path, readonly=True)
    return [(r, log.payload(r["digest"])) for r in log.records]


def write_log(path: Path, entries: Entries, groups: int = 1) -> None:
    """Replace the log with ``entries`` in ``groups`` groups, each with a valid check."""
    out = bytearray()
    size = -(-len(entries) // groups) if entries else 0
    for start in range(0, len(entries), max(size, 1)):
        part = entries[start : start + size]
        out += b"".join(bytes(c) for c in frame_chunks([r for r, _ in part], [p for _, p in part]))
    path.write_bytes(bytes(out))


def edit_log(
    store: PayloadStore, key: object, round: int, edit: Callable[[Entries], Entries]
) -> None:
    """Rewrite a round's log with ``edit`` applied to its (record, payload) entries."""
    path = log_path(store, key, round)
    write_log(path, edit(read_log(path)))


def flip_payload_byte(
    store: PayloadStore, key: object, round: int, digest: str, at: int = 0
) -> None:
    """Flip one bit of a stored payload in place (every group's check still holds)."""
    path = log_path(store, key, round)
    span = RoundLog(path, readonly=True).locate(digest.removeprefix("0x"))
    assert span is not None, f"payload {digest} is not in {path}"
    offset, size = span
    raw = bytearray(path.read_bytes())
    raw[offset + (at % size)] ^= 1
    path.write_bytes(bytes(raw))


def replace_payload(
    store: PayloadStore, key: object, round: int, digest: str, new: Callable[[bytes], bytes]
) -> None:
    """Replace a stored payload with ``new(old)`` (any length), the log rewritten around it."""
    digest = digest.removeprefix("0x")
    edit_log(
        store,
        key,
        round,
        lambda entries: [(r, new(p) if r["digest"] == digest else p) for r, p in entries],
    )
