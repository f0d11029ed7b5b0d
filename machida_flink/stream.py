"""One pipeline's recorded input: an append-only file that outlives the process writing it.

The ingress appends each sender read's frames as one entry
(:mod:`machida_flink.ingress_log`) and serves the file by offset to the job's
source. An entry is *acknowledged* once anything outside this process may rely
on it: when it is served to the job (whose checkpoints then hold offsets past
it) or counted in a ``RESILIENCE: ... had accepted N record(s)`` line. So
nothing is served before it is on disk: appends are synced by a thread of the
stream's own, one ``fdatasync`` covering every append made since the previous
one began (a group commit, at most one every :data:`SYNC_GAP_S`), and only the
synced prefix, :attr:`Stream.durable`, is ever read out.

A completed checkpoint no longer needs what lies before its offset, so that
disk is given back (a hole punched in the file, offsets unchanged). Before it
is, the stream's *base* is made durable in a small file next to it
(``<stream>.base``): the offset, how many frames the stream held before it and
how many sender connections the ingress had numbered. A run started again
after a crash reads the file back from its base (:meth:`Stream.resume`), so it
knows every frame the stream ever accepted without the punched bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
from array import array
from bisect import bisect_right
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from machida.console import warn
from machida.files import fsync_directory
from machida_flink.ingress_log import Scanner

# A stream may run this far ahead of its reader before the senders are paused
# (the job is starting, restarting or slower than the senders); files, not memory, hold it.
HIGH_WATER = 64 * 1024 * 1024
# One serve read: large enough that a reader catching up gets big records.
SERVE_CHUNK = 1024 * 1024
# A resumed stream is read back in pieces this big.
SCAN_CHUNK = 16 * 1024 * 1024
# Syncs start at most this often: one covers everything appended meanwhile, and a sync
# costs the loop a hand-off to the stream's thread and back (an fdatasync of an append is
# about 0.15 ms on these disks, so back-to-back syncs would cost more in hand-offs than in
# I/O). A record waits at most this long more before it is served, which is little next
# to the job's own latency.
SYNC_GAP_S = 0.002
# Disk is given back in whole pages.
PAGE = 4096
BASE_FORMAT = 1
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


def punch_hole(fd: int, start: int, end: int) -> bool:
    """Deallocate ``[start, end)`` of a file, keeping its size (Linux); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    return fallocate(fd, mode, start, end - start) == 0


def write_durably(path: Path, data: bytes) -> None:
    """Replace ``path`` with ``data``, whole or not at all, and on disk before returning."""
    temp = path.with_name(path.name + ".tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)
    fsync_directory(path.parent)


@dataclass(frozen=True)
class Base:
    """Where a stream's file is whole from: an entry boundary, the frames before it, and the
    ingress's connection count when it was written."""

    offset: int = 0
    records: int = 0
    connections: int = 0

    def to_json(self) -> dict:
        return {"offset": self.offset, "records": self.records, "connections": self.connections}

    @classmethod
    def from_json(cls, doc: dict) -> Base:
        return cls(int(doc["offset"]), int(doc["records"]), int(doc["connections"]))


def base_path(path: Path) -> Path:
    return path.with_name(path.name + ".base")


def read_base(path: Path) -> Base:
    """The base recorded next to stream ``path`` (ValueError or OSError if unreadable)."""
    doc = json.loads(base_path(path).read_text())
    if doc.get("format") != BASE_FORMAT:
        raise ValueError(f"unknown format {doc.get('format')!r}")
    return Base.from_json(doc)


def write_base(path: Path, base: Base) -> None:
    write_durably(base_path(path), json.dumps({"format": BASE_FORMAT, **base.to_json()}).encode())


class Stream:
    """The file, what of it is written, synced, served and given back, and who waits on it.

    ``on_pressure(stream)`` is called when the stream runs :data:`HIGH_WATER` ahead of
    what was served; ``on_failure(stream, err)`` when the disk refuses a sync.
    """

    def __init__(self, path: Path, fd: int, base: Base) -> None:
        self.path = path
        self.fd = fd
        self.base = base  # the durable base; moved forward by release()
        self.size = base.offset  # what was written whole
        self.durable = base.offset  # what was synced; only this much is ever served
        self.served = base.offset  # the furthest offset sent to a reader
        self.released = base.offset // PAGE * PAGE  # disk below this offset was given back
        self.records = base.records  # frames written whole
        self.ended = False
        self.paused = False
        self.failed = False
        self.subscribed = asyncio.Event()
        self.grown = asyncio.Event()
        self.on_pressure: Callable[[Stream], None] = lambda stream: None
        self.on_failure: Callable[[Stream, OSError], None] = lambda stream, err: None
        # every FRAMES entry's end offset and the frames up to it, from the base on
        self._mark_ends = array("Q")
        self._mark_records = array("Q")
        self._mark0 = 0
        self._syncing = False
        self._base_failed = False
        self._last_sync = -SYNC_GAP_S
        self._worker = ThreadPoolExecutor(1, thread_name_prefix=f"sync {path.name}")

    @classmethod
    def create(cls, path: Path, base: Base = Base()) -> Stream:
        """A new, empty stream whose offsets start at ``base.offset`` (a run started from a
        savepoint goes on with the offsets its streams had)."""
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.ftruncate(fd, base.offset)  # a hole: those bytes were processed by another run
            write_base(path, base)
        except BaseException:
            os.close(fd)
            raise
        return cls(path, fd, base)

    @classmethod
    def resume(cls, path: Path) -> tuple[Stream, Scanner]:
        """The stream a run that did not stop cleanly left, read back from its base; a tail
        that is not whole entries (a write cut by the crash, never acknowledged) is cut off.
        Also returns what the walk found (records, connections left open)."""
        base = read_base(path)
        fd = os.open(path, os.O_RDWR)
        try:
            scanner = Scanner(base.offset, base.records)
            at = base.offset
            while chunk := os.pread(fd, SCAN_CHUNK, at):
                scanner.feed(chunk)
                at += len(chunk)
            if scanner.offset < at:
                why = scanner.error or "the last entry is incomplete"
                cut = at - scanner.offset
                warn(f"WARNING: {path}: {cut} byte(s) from offset {scanner.offset} are not "
                     f"whole entries ({why}), as a write cut short by a crash leaves them; "
                     f"they were never acknowledged and are dropped")  # fmt: skip
                os.ftruncate(fd, scanner.offset)
        except BaseException:
            os.close(fd)
            raise
        stream = cls(path, fd, base)
        stream.size = stream.durable = stream.served = scanner.offset
        stream.records = scanner.records
        for end, records in scanner.marks:
            stream._mark_ends.append(end)
            stream._mark_records.append(records)
        return stream, scanner

    # -- writing ---------------------------------------------------------------------------

    def append(self, data: bytes, records: int = 0) -> None:
        """Write an entry holding ``records`` frames after the last one, and have it synced.
        An OSError (disk full) leaves :attr:`size` as it was, so a partly written entry is
        never served."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.size + done)
        self.size += done
        if records:
            self.records += records
            self._mark_ends.append(self.size)
            self._mark_records.append(self.records)
        self._sync_soon()
        if self.size - self.served > HIGH_WATER:
            self.on_pressure(self)

    def _sync_soon(self) -> None:
        if self._syncing or self.failed or self.fd < 0:
            return
        self._syncing = True
        loop = asyncio.get_running_loop()
        wait = self._last_sync + SYNC_GAP_S - loop.time()
        if wait > 0:
            loop.call_later(wait, self._sync_now)
        else:
            self._sync_now()

    def _sync_now(self) -> None:
        if self.failed or self.fd < 0:
            self._syncing = False
            return
        target = self.size
        loop = asyncio.get_running_loop()
        self._last_sync = loop.time()
        done = loop.run_in_executor(self._worker, os.fdatasync, self.fd)
        done.add_done_callback(lambda future: self._synced(future, target))

    def _synced(self, future: asyncio.Future, target: int) -> None:
        self._syncing = False
        err = None if future.cancelled() else future.exception()
        if err is not None:
            self.failed = True
            self.size = self.durable  # what was not synced is never served
            if isinstance(err, OSError):
                self.on_failure(self, err)
            self.grown.set()
            return
        if target > self.durable:
            self.durable = target
            self.grown.set()
        if self.size > self.durable:
            self._sync_soon()

    def end(self) -> None:
        """Nothing more comes: a reader at the end gets the end entry and finishes."""
        self.ended = True
        self.grown.set()

    @property
    def complete(self) -> bool:
        """Everything written is synced (and, once ended, may be followed by the end entry)."""
        return self.durable == self.size and not self._syncing

    # -- reading and giving back ---------------------------------------------------------------

    def read(self, offset: int) -> bytes:
        return os.pread(self.fd, min(SERVE_CHUNK, self.durable - offset), offset)

    def records_at(self, offset: int) -> int:
        """How many frames the stream holds before ``offset`` (an entry boundary at or past
        the base)."""
        i = bisect_right(self._mark_ends, offset, self._mark0) - 1
        return self._mark_records[i] if i >= self._mark0 else self.base.records

    def release(self, offset: int, connections: int) -> None:
        """A completed checkpoint holds ``offset``: no restore goes back further, so the base
        moves there and the disk under it is given back. ``connections`` is the ingress's
        connection count now, kept with the base."""
        if offset <= self.base.offset or offset > self.durable or self.fd < 0:
            return
        base = Base(offset, self.records_at(offset), connections)
        self.base = base
        self._forget_marks(offset)
        start, end = self.released, offset // PAGE * PAGE
        self.released = max(start, end)
        self._worker.submit(self._move_base, base, start, end)

    def _move_base(self, base: Base, start: int, end: int) -> None:
        """In the stream's thread: the new base on disk first, and only then the hole, so that
        a crash in between never leaves a base that points into punched bytes."""
        try:
            write_base(self.path, base)
        except OSError as err:
            if not self._base_failed:  # once: it is tried again at every checkpoint
                warn(f"WARNING: cannot write {base_path(self.path)}: {err.strerror}; the "
                     f"disk under {self.path} is kept until it can be")  # fmt: skip
            self._base_failed = True
            return
        self._base_failed = False
        if end > start and self.fd >= 0:
            punch_hole(self.fd, start, end)

    def _forget_marks(self, offset: int) -> None:
        self._mark0 = bisect_right(self._mark_ends, offset, self._mark0)
        if self._mark0 > 4096 and self._mark0 * 2 > len(self._mark_ends):
            del self._mark_ends[: self._mark0]
            del self._mark_records[: self._mark0]
            self._mark0 = 0

    def close(self) -> None:
        self._worker.shutdown(wait=True)
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1
