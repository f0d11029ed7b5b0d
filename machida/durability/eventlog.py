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
missing. With exactly-once output a commit also holds the output about to be
written to each sink (numbered in its key's stream), the numbering of each
stream that moved on, and how far each receiver has acknowledged; output is
written only once logged, so a receiver never holds output a crash could take
back. Recovery reads the commits in order, one at a time (a log of any size
recovers in the memory of what it restores): the newest snapshot of each key
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
| ``W`` | (empty) | ``u16be pipeline``, ``u32be length``, an ``O`` frame written to the sink |
| ``N`` | (empty) | a stream (``u16be`` p, ``u32be`` key, ``u64be`` epoch), ``u64be`` last number |
| ``Y`` | (empty) | a stream, as ``N``, and ``u64be`` the mark its receiver acknowledged |

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
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from machida.errors import EventLogError, FrameError
from machida.files import fsync_directory
from machida.wire.exactly_once import OutputRun, SinkDecoder, SinkOutputs, Stream

MAGIC = b"machida-evlog 2 "
_COMMIT = struct.Struct(">II")
_NAME = struct.Struct(">H")
_SNAPSHOT = struct.Struct(">II")
_ORIGIN = struct.Struct(">QQ")
_U64 = struct.Struct(">Q")
_FORWARDED = struct.Struct(">QII")
_OUTPUT = struct.Struct(">HI")
_STREAM = struct.Struct(">HIQQ")
# A header line longer than this is not one of ours.
_MAX_HEADER = 64 * 1024


def encode_commit(
    snapshots: Iterable[tuple[str, int, bytes]] = (),
    origins: Mapping[str, tuple[int, int]] | None = None,
    *,
    incarnation: int | None = None,
    forwarded: Iterable[tuple[str, int, int, bytes]] = (),
    acked: Mapping[str, int] | None = None,
    accepted: Mapping[str, int] | None = None,
    released: Iterable[tuple[str, int]] = (),
    outputs: Iterable[tuple[int, bytes]] = (),
    counters: Mapping[tuple[int, int], tuple[int, int]] | None = None,
    sink_acked: Mapping[Stream, int] | None = None,
) -> bytes:
    """One commit: snapshots ``(state, key index, bytes)``, origins ``{upstream: (inc, seq)}``,
    this worker's incarnation, batches ``(downstream, first seq, records, frame)``,
    acknowledgements ``{downstream: seq}``, source counts ``{pipeline: records}``, the keys
    released ``(state, key index)``, output frames ``(pipeline, frame)``, the numbering of
    output streams ``{(pipeline, key): (epoch, seq)}`` and receivers' acknowledgements
    ``{stream: seq}``."""
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
    for p, frame in outputs:
        entry(b"W", "", _OUTPUT.pack(p, len(frame)), frame)
    for (p, key), (epoch, seq) in (counters or {}).items():
        entry(b"N", "", _STREAM.pack(p, key, epoch, seq))
    for stream, seq in (sink_acked or {}).items():
        entry(b"Y", "", _STREAM.pack(*stream, seq))
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
class SinkLog:
    """What a log says of one pipeline's exactly-once sink: the output frames logged and not
    yet wholly acknowledged (as runs), and each stream's acknowledged mark."""

    acked: dict[Stream, int] = field(default_factory=dict)
    frames: deque[list[OutputRun]] = field(default_factory=deque)

    def output(self, runs: list[OutputRun]) -> None:
        self.frames.append(runs)

    def acknowledged(self, stream: Stream, seq: int) -> None:
        self.acked[stream] = max(self.acked.get(stream, 0), seq)
        while self.frames and all(self._acked(run) for run in self.frames[0]):
            self.frames.popleft()

    def _acked(self, run: OutputRun) -> bool:
        return run.first + len(run.values) - 1 <= self.acked.get(run.stream, 0)

    def runs(self) -> list[OutputRun]:
        """The output not acknowledged, per stream in order."""
        out = []
        for runs in self.frames:
            for stream, first, values in runs:
                skip = self.acked.get(stream, 0) - first + 1
                if skip < len(values):
                    skip = max(skip, 0)
                    out.append(OutputRun(stream, first + skip, values[skip:]))
        return out


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
    sinks: dict[int, SinkLog] = field(default_factory=dict)
    counters: dict[tuple[int, int], tuple[int, int]] = field(default_factory=dict)
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
        if kind == b"W":
            p, size = _OUTPUT.unpack_from(body, pos)
            start = pos + _OUTPUT.size
            self.sinks.setdefault(p, SinkLog()).output(_output_runs(body[start : start + size]))
            return start + size
        if kind in (b"N", b"Y"):
            p, key, epoch, seq = _STREAM.unpack_from(body, pos)
            if kind == b"N":
                self.counters[(p, key)] = (epoch, seq)
            else:
                self.sinks.setdefault(p, SinkLog()).acknowledged(Stream(p, key, epoch), seq)
            return pos + _STREAM.size
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


def _output_runs(frame: bytes) -> list[OutputRun]:
    """The runs of one logged ``O`` frame."""
    decoder = SinkDecoder()
    events = decoder.feed(frame)
    if decoder.error is not None or len(events) != 1 or not isinstance(events[0], SinkOutputs):
        raise ValueError(f"a logged output frame does not decode ({decoder.error})")
    return events[0].runs


def header(module: str, worker: str, fingerprint: str) -> bytes:
    info = {"module": module, "worker": worker, "fingerprint": fingerprint}
    return MAGIC + json.dumps(info, sort_keys=True).encode() + b"\n"


def read_log(path: str, module: str, worker: str, fingerprint: str) -> Replay:
    """Every complete commit of ``path``, read one at a time (memory holds one commit and what
    it restores, however long the file); a wrong header or a bad entry is an error."""
    try:
        with open(path, "rb") as file:
            return _read(file, path, header(module, worker, fingerprint))
    except OSError as err:
        raise EventLogError(f"event log {path} cannot be read: {err.strerror}") from err


def _read(file, path: str, expected: bytes) -> Replay:
    size = os.fstat(file.fileno()).st_size
    line = file.readline(_MAX_HEADER)
    if line != expected:
        shown = line.rstrip(b"\n")[:200]
        raise EventLogError(
            f"event log {path} does not match this worker (its header is "
            f"{shown!r}); remove it or use another --resilience-dir"
        )
    replay = Replay()
    pos = len(line)
    while True:
        head = file.read(_COMMIT.size)
        if len(head) < _COMMIT.size:
            break
        length, crc = _COMMIT.unpack(head)
        if pos + _COMMIT.size + length > size:
            break  # a torn final commit: the crash came in the middle of it
        body = file.read(length)
        if len(body) < length or zlib.crc32(body) != crc:
            break
        try:
            replay.apply_commit(body)
        except (ValueError, struct.error, UnicodeDecodeError, FrameError) as err:
            raise EventLogError(f"event log {path} has a corrupt entry: {err}") from err
        pos += _COMMIT.size + length
    replay.end = pos
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
