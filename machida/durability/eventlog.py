"""The event log of a worker in resilience mode: state snapshots and message origins.

After each batch a worker appends one *commit* holding the newest snapshot of
every key whose state call asked to persist (``persist`` a ``bool``) and, for
each upstream worker, the highest sequence number applied from it; then it
fsyncs. That is group commit: one fsync per batch, never per message. Only
after the fsync does the worker acknowledge those messages upstream, so a
crash can re-emit output for messages that were not yet logged, but never
loses one. Recovery reads the commits in order: the newest snapshot of each key
replaces the state ``build()`` made, and the origins tell the boundary what to
skip when the upstream replays its backlog.

File layout: a header line ``machida-evlog 1 <json>\\n`` (module, worker,
fingerprint), then commits ``u32be length | u32be crc32 | body``. A body is a
sequence of entries: ``S | u16be name length | name | u32be key index | u32be
length | serialized state`` and ``O | u16be name length | upstream | u64be
incarnation | u64be seq``. A torn final commit (short or failing its CRC) is
ignored, and cut off before the worker appends to the file again. With
rotation the files are ``<module>-<worker>-<16 hex>.evlog``, the hex being the
cumulative byte offset at which the file starts; recovery reads the newest.
"""

from __future__ import annotations

import json
import os
import struct
import zlib
from dataclasses import dataclass, field

MAGIC = b"machida-evlog 1 "
_COMMIT = struct.Struct(">II")
_NAME = struct.Struct(">H")
_SNAPSHOT = struct.Struct(">II")
_ORIGIN = struct.Struct(">QQ")


class EventLogError(Exception):
    """The event log cannot be used; the message names the file and the cause."""


def encode_commit(snapshots: list[tuple[str, int, bytes]], origins: dict) -> bytes:
    """One commit: snapshots ``(state, key index, bytes)`` and origins ``{name: (inc, seq)}``."""
    parts = []
    for state_name, key_index, data in snapshots:
        name = state_name.encode()
        parts += [b"S", _NAME.pack(len(name)), name, _SNAPSHOT.pack(key_index, len(data)), data]
    for upstream, (incarnation, seq) in origins.items():
        name = upstream.encode()
        parts += [b"O", _NAME.pack(len(name)), name, _ORIGIN.pack(incarnation, seq)]
    body = b"".join(parts)
    return _COMMIT.pack(len(body), zlib.crc32(body)) + body


@dataclass
class Replay:
    """What a log holds: the newest snapshot per key, origins, how many entries, and
    ``end``, the file offset just after the last complete commit (header included)."""

    snapshots: dict[tuple[str, int], bytes] = field(default_factory=dict)
    origins: dict[str, tuple[int, int]] = field(default_factory=dict)
    entries: int = 0
    end: int = 0

    def apply_commit(self, body: bytes) -> None:
        pos = 0
        while pos < len(body):
            kind = body[pos : pos + 1]
            (length,) = _NAME.unpack_from(body, pos + 1)
            name = body[pos + 3 : pos + 3 + length].decode()
            pos += 3 + length
            if kind == b"S":
                key_index, size = _SNAPSHOT.unpack_from(body, pos)
                pos += _SNAPSHOT.size
                self.snapshots[(name, key_index)] = body[pos : pos + size]
                pos += size
            elif kind == b"O":
                self.origins[name] = _ORIGIN.unpack_from(body, pos)
                pos += _ORIGIN.size
            else:
                raise ValueError(f"unknown entry kind {kind!r}")
            self.entries += 1


def header(module: str, worker: str, fingerprint: str) -> bytes:
    info = {"module": module, "worker": worker, "fingerprint": fingerprint}
    return MAGIC + json.dumps(info, sort_keys=True).encode() + b"\n"


def read_log(path: str, module: str, worker: str, fingerprint: str) -> Replay:
    """Every complete commit of ``path``; a wrong header or a bad entry is an error."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except OSError as err:
        raise EventLogError(f"Error: event log {path} cannot be read: {err.strerror}") from err
    line, _, rest = data.partition(b"\n")
    if line + b"\n" != header(module, worker, fingerprint):
        raise EventLogError(
            f"Error: event log {path} does not match this worker (its header is "
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
            raise EventLogError(f"Error: event log {path} has a corrupt entry: {err}") from err
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
        if not self.file.closed:
            self.file.close()
