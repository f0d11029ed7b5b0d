"""The event log of a worker in resilience mode: its state, what it applied, what it sent.

After each batch a worker appends one *commit* and fsyncs it (group commit:
one fsync per batch, never per message). A commit holds the newest snapshot
of every key whose state call asked to persist (``persist`` a ``bool``); for
each upstream worker, the highest sequence number applied from it; the
batches it is about to send to each downstream worker (its *upstream
backup*) and how far each downstream has acknowledged; and how many records
each source has accepted. Only after the fsync does the worker send those
batches or acknowledge anything upstream, so whatever crashes, and in
whatever order, nothing accepted is lost: output may repeat, never go
missing. Recovery reads the commits in order: the newest snapshot of each key
replaces the state ``build()`` made (a key released since, handed over in a grow or
shrink, is no longer held), the origins tell the boundary what to
skip when an upstream replays, the unacknowledged batches are sent again
under the same incarnation and numbers, and the source counts say from where
a sender must resume.

File layout: a header line ``machida-evlog 2 <json>\\n`` (module, worker,
fingerprint), then commits ``u32be length | u32be crc32 | body``. A body is a
sequence of entries, each ``kind | u16be name length | name | fields``:

| kind | name | fields |
|---|---|---|
| ``S`` | state | ``u32be key index``, ``u32be length``, the state as ``serialize`` made it |
| ``O`` | upstream worker | ``u64be incarnation``, ``u64be seq`` applied |
| ``I`` | (empty) | ``u64be incarnation`` of this worker |
| ``F`` | downstream worker | ``u64be first seq``, ``u32be records``, ``u32be length``, the batch |
| ``A`` | downstream worker | ``u64be seq`` acknowledged |
| ``C`` | source's pipeline | ``u64be`` records accepted |
| ``R`` | state | ``u64be`` key index: the key was handed over to another worker |

A torn final commit (short or failing its CRC) is ignored, and cut off before
the worker appends to the file again. With rotation the files are
``<module>-<worker>-<16 hex>.evlog``, the hex being the cumulative byte offset
at which the file starts; each new file starts with everything recovery needs,
and recovery reads the newest.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from machida.durability.recovery import fsync_directory
from machida.errors import EventLogError

MAGIC = b"machida-evlog 2 "
_COMMIT = struct.Struct(">II")
_NAME = struct.Struct(">H")
_SNAPSHOT = struct.Struct(">II")
_ORIGIN = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
_FORWARDED = struct.Struct(">QII")


def encode_commit(
    snapshots: Iterable[tuple[str, int, bytes]] = (),
    origins: Mapping[str, tuple[int, int]] | None = None,
    *,
    incarnation: int | None = None,
    forwarded: Iterable[tuple[str, int, int, bytes]] = (),
    acked: Mapping[str, int] | None = None,
    accepted: Mapping[str, int] | None = None,
    released: Iterable[tuple[str, int]] = (),
) -> bytes:
    """One commit: snapshots ``(state, key index, bytes)``, origins ``{upstream: (inc, seq)}``,
    this worker's incarnation, batches ``(downstream, first seq, records, frame)``,
    acknowledgements ``{downstream: seq}``, source counts ``{pipeline: records}`` and the keys
    released ``(state, key index)``."""
    parts: list[bytes] = []

    def entry(kind: bytes, name: str, *fields: bytes) -> None:
        encoded = name.encode()
        parts.extend((kind, _NAME.pack(len(encoded)), encoded, *fields))

    for state_name, key_index, data in snapshots:
        entry(b"S", state_name, _SNAPSHOT.pack(key_index, len(data)), data)
    for upstream, (inc, seq) in (origins or {}).items():
        entry(b"O", upstream, _ORIGIN.pack(inc, seq))
    if incarnation is not None:
        entry(b"I", "", _U64.pack(incarnation))
    for peer, first, count, frame in forwarded:
        entry(b"F", peer, _FORWARDED.pack(first, count, len(frame)), frame)
    for peer, seq in (acked or {}).items():
        entry(b"A", peer, _U64.pack(seq))
    for source, count in (accepted or {}).items():
        entry(b"C", source, _U64.pack(count))
    for state_name, key_index in released:
        entry(b"R", state_name, _U64.pack(key_index))
    body = b"".join(parts)
    return _COMMIT.pack(len(body), zlib.crc32(body)) + body


@dataclass
class LinkLog:
    """What a log says of one downstream worker: acknowledged up to ``acked``, numbered up to
    ``next_seq - 1``, and the batches not yet wholly acknowledged ``(first, records, frame)``."""

    acked: int = 0
    next_seq: int = 1
    batches: list[tuple[int, int, bytes]] = field(default_factory=list)

    def forwarded(self, first: int, count: int, frame: bytes) -> None:
        self.next_seq = max(self.next_seq, first + count)
        if first + count - 1 > self.acked:
            self.batches.append((first, count, frame))

    def acknowledged(self, seq: int) -> None:
        self.acked = max(self.acked, seq)
        # a log that starts after a rotation holds only the mark of a link with nothing in
        # flight: the numbering goes on after it, or the receiver would skip the new batches
        self.next_seq = max(self.next_seq, seq + 1)
        while self.batches and sum(self.batches[0][:2]) - 1 <= self.acked:
            self.batches.pop(0)


@dataclass
class Replay:
    """What a log holds: the newest snapshot of each key still held (none of a key released
    since), origins, this worker's incarnation, its downstream links, source counts, how many
    entries, and ``end``, the file offset just after the last complete commit (header
    included)."""

    snapshots: dict[tuple[str, int], bytes] = field(default_factory=dict)
    origins: dict[str, tuple[int, int]] = field(default_factory=dict)
    incarnation: int | None = None
    links: dict[str, LinkLog] = field(default_factory=dict)
    accepted: dict[str, int] = field(default_factory=dict)
    entries: int = 0
    end: int = 0

    def apply_commit(self, body: bytes) -> None:
        pos = 0
        while pos < len(body):
            kind = body[pos : pos + 1]
            (length,) = _NAME.unpack_from(body, pos + 1)
            name = body[pos + 3 : pos + 3 + length].decode()
            pos = self._apply(kind, name, body, pos + 3 + length)
            self.entries += 1

    def _apply(self, kind: bytes, name: str, body: bytes, pos: int) -> int:
        """One entry's fields at ``pos``; returns where the next entry starts."""
        if kind == b"S":
            key_index, size = _SNAPSHOT.unpack_from(body, pos)
            start = pos + _SNAPSHOT.size
            self.snapshots[(name, key_index)] = body[start : start + size]
            return start + size
        if kind == b"O":
            self.origins[name] = _ORIGIN.unpack_from(body, pos)
            return pos + _ORIGIN.size
        if kind == b"F":
            first, count, size = _FORWARDED.unpack_from(body, pos)
            start = pos + _FORWARDED.size
            self.links.setdefault(name, LinkLog()).forwarded(
                first, count, body[start : start + size]
            )
            return start + size
        (value,) = _U64.unpack_from(body, pos)
        if kind == b"I":
            self.incarnation = value
        elif kind == b"A":
            self.links.setdefault(name, LinkLog()).acknowledged(value)
        elif kind == b"C":
            self.accepted[name] = value
        elif kind == b"R":
            self.snapshots.pop((name, value), None)
        else:
            raise ValueError(f"unknown entry kind {kind!r}")
        return pos + _U64.size


def header(module: str, worker: str, fingerprint: str) -> bytes:
    info = {"module": module, "worker": worker, "fingerprint": fingerprint}
    return MAGIC + json.dumps(info, sort_keys=True).encode() + b"\n"


def read_log(path: str, module: str, worker: str, fingerprint: str) -> Replay:
    """Every complete commit of ``path``; a wrong header or a bad entry is an error."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise EventLogError(f"event log {path} cannot be read: {err.strerror}") from err
    line, _, rest = data.partition(b"\n")
    if line + b"\n" != header(module, worker, fingerprint):
        raise EventLogError(
            f"event log {path} does not match this worker (its header is "
            f"{line[:200]!r}); remove it or use another --resilience-dir"
        )
    replay = Replay()
    pos = 0
    while pos + _COMMIT.size <= len(rest):
        length, crc = _COMMIT.unpack_from(rest, pos)
        body = rest[pos + _COMMIT.size : pos + _COMMIT.size + length]
        if len(body) < length or zlib.crc32(body) != crc:
            break  # a torn final commit: the crash came in the middle of it
        try:
            replay.apply_commit(body)
        except (ValueError, struct.error, UnicodeDecodeError) as err:
            raise EventLogError(f"event log {path} has a corrupt entry: {err}") from err
        pos += _COMMIT.size + length
    replay.end = len(line) + 1 + pos
    return replay


def recover_log(path: str, module: str, worker: str, fingerprint: str) -> Replay:
    """:func:`read_log`, then cut off a torn final commit so that appends follow good data."""
    replay = read_log(path, module, worker, fingerprint)
    if os.path.getsize(path) > replay.end:
        os.truncate(path, replay.end)
    return replay


class EventLog:
    """The open log file of one worker: append commits, fsync, rotate."""

    def __init__(self, path: str, module: str, worker: str, fingerprint: str, offset: int = 0):
        self.path = path
        self.head = header(module, worker, fingerprint)
        self.offset = offset  # bytes logged before this file, for rotated names
        self.file = open(path, "ab")  # noqa: SIM115 (kept open for the worker's life)
        if self.file.tell() == 0:
            self.file.write(self.head)
            self.sync()
            # the new file's name, too, before anything relies on it (a rotation then
            # removes the older files)
            fsync_directory(os.path.dirname(path) or ".")
        self.size = self.file.tell()
        self.dirty = False  # something was logged since the last snapshot of every key

    def append(self, commit: bytes) -> None:
        self.file.write(commit)
        self.size += len(commit)
        self.dirty = True

    def sync(self) -> None:
        """Make everything appended so far durable (one fsync per batch)."""
        self.file.flush()
        os.fsync(self.file.fileno())

    def close(self) -> None:
        """Close the file. Bytes that could not be written (a full disk) are dropped: they were
        never fsync'd, so nothing they hold was acknowledged."""
        if not self.file.closed:
            with contextlib.suppress(OSError):  # the file is closed even when its flush fails
                self.file.close()
