"""Sans-I/O codecs of the ingress: the entries it records and the requests readers send.

The ingress keeps, per pipeline source, one append-only stream of *entries*; the
Flink source reads that stream by byte offset and hands whole entries to the
Python steps as one record. An entry is ``u32be n | u8 kind | u32be connection |
body`` where ``n`` counts everything after the length field:

* ``OPENED``: a sender connected; the body is its address, UTF-8;
* ``FRAMES``: complete frames of one socket read, already cut with the
  application's decoder; the body is ``(u32be length | payload)*``;
* ``CLOSED``: that connection ended;
* ``END``: the stream ends here (clean shutdown); the source finishes. It is
  sent to a reader after the last entry and never written.

Readers talk to the ingress with two requests: ``SUBSCRIBE`` (``0x01 | u32be
stream | u64be offset | token``: send me the stream from here; ``token`` is the
run's :data:`TOKEN_SIZE` random bytes, which only the job's sources are given)
and ``COMMIT`` (``0x02 | u64be offset``: a completed checkpoint no longer needs
what lies before it). :class:`Scanner` reads a stream's file back when a run
starts again after a crash: how many frames it holds, which connections it
left open, and where its last whole entry ends. Nothing here imports a socket
or an event loop.
"""

from __future__ import annotations

import struct

from machida.errors import FrameError

OPENED = 1
FRAMES = 2
CLOSED = 3
END = 4
KINDS = (OPENED, FRAMES, CLOSED, END)

ENTRY = struct.Struct(">IBI")
LENGTH = struct.Struct(">I")
# What follows an entry's length field before its body: kind and connection.
ENTRY_TAIL = ENTRY.size - LENGTH.size

SUBSCRIBE = 1
COMMIT = 2
# The serve port's shared secret: a fresh random token per run, in every subscription.
TOKEN_SIZE = 32
SUBSCRIBE_REQUEST = struct.Struct(f">BIQ{TOKEN_SIZE}s")
COMMIT_REQUEST = struct.Struct(">BQ")
REQUEST_SIZES = {SUBSCRIBE: SUBSCRIBE_REQUEST.size, COMMIT: COMMIT_REQUEST.size}


def entry(kind: int, connection: int, body: bytes = b"") -> bytes:
    """One entry: ``u32be n | u8 kind | u32be connection | body``."""
    return ENTRY.pack(ENTRY_TAIL + len(body), kind, connection) + body


def frames_entry(connection: int, payloads: list[bytes]) -> bytes:
    """A ``FRAMES`` entry holding ``payloads`` in order."""
    pack = LENGTH.pack
    body = b"".join([part for payload in payloads for part in (pack(len(payload)), payload)])
    return entry(FRAMES, connection, body)


def split_entries(record: bytes) -> list[tuple[int, int, memoryview]]:
    """The ``(kind, connection, body)`` of every entry in a record of whole entries.

    A record is what the Flink source emits: whole entries only. Anything else
    means the reader and the ingress disagree, which is a :class:`FrameError`.
    """
    view = memoryview(record)
    unpack = ENTRY.unpack_from
    out = []
    pos, end = 0, len(record)
    while pos < end:
        if end - pos < ENTRY.size:
            raise FrameError(f"a record ends inside an entry header at byte {pos} of {end}")
        n, kind, connection = unpack(record, pos)
        stop = pos + LENGTH.size + n
        if n < ENTRY_TAIL or stop > end or kind not in KINDS:
            raise FrameError(f"bad entry at byte {pos} of a {end}-byte record: n={n} kind={kind}")
        out.append((kind, connection, view[pos + ENTRY.size : stop]))
        pos = stop
    return out


def count_frames(body: memoryview) -> int:
    """How many frames a ``FRAMES`` body holds (a :class:`FrameError` if it is not whole)."""
    unpack = LENGTH.unpack_from
    count = 0
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < LENGTH.size:
            raise FrameError(f"a FRAMES entry ends inside a frame's length at byte {pos} of {end}")
        pos += LENGTH.size + unpack(body, pos)[0]
        count += 1
    if pos != end:
        raise FrameError(f"a FRAMES entry ends inside a frame ({pos - end} byte(s) missing)")
    return count


def split_frames(body: memoryview) -> list[bytes]:
    """The payloads of a ``FRAMES`` body, as ``bytes`` (what a decoder receives)."""
    unpack = LENGTH.unpack_from
    out = []
    append = out.append
    pos, end = 0, len(body)
    while pos < end:
        if end - pos < LENGTH.size:
            raise FrameError(f"a FRAMES entry ends inside a frame's length at byte {pos} of {end}")
        (length,) = unpack(body, pos)
        stop = pos + 4 + length
        if stop > end:
            raise FrameError(f"a FRAMES entry ends inside a {length}-byte frame")
        append(body[pos + 4 : stop].tobytes())
        pos = stop
    return out


class RequestDecoder:
    """Splits what a reader sends into ``(kind, stream, offset, token)`` requests.

    ``stream`` is ``None`` and ``token`` empty for a commit. An unknown request
    kind sets :attr:`error`; the requests before it are still returned.
    """

    __slots__ = ("_buf", "error")

    def __init__(self) -> None:
        self._buf = b""
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[tuple[int, int | None, int, bytes]]:
        if self.error is not None:
            return []
        buf = self._buf + data
        out: list[tuple[int, int | None, int, bytes]] = []
        pos = 0
        while pos < len(buf):
            size = REQUEST_SIZES.get(buf[pos])
            if size is None:
                self.error = FrameError(f"unknown ingress request kind {buf[pos]}")
                self._buf = b""
                return out
            if len(buf) - pos < size:
                break
            if buf[pos] == SUBSCRIBE:
                _, stream, offset, token = SUBSCRIBE_REQUEST.unpack_from(buf, pos)
                out.append((SUBSCRIBE, stream, offset, token))
            else:
                _, offset = COMMIT_REQUEST.unpack_from(buf, pos)
                out.append((COMMIT, None, offset, b""))
            pos += size
        self._buf = buf[pos:]
        return out


class Subscription:
    """What one authenticated reader connection has been sent and has committed.

    A reader commits the offsets of its completed checkpoints, which only move
    forward and never pass what this connection sent it; anything else is a
    reader the ingress cannot trust with the disk under the stream, and
    :meth:`commit` says why (the caller closes the connection).
    """

    __slots__ = ("committed", "sent", "stream")

    def __init__(self, stream: int, offset: int) -> None:
        self.stream = stream
        self.sent = offset
        self.committed = offset

    def commit(self, kind: int, offset: int) -> str | None:
        """Accept a request after the subscription; ``None``, or why it is refused."""
        if kind != COMMIT:
            return "a second subscription on one connection"
        if offset < self.committed:
            return f"commit {offset} goes back from {self.committed}"
        if offset > self.sent:
            return f"commit {offset} is beyond the {self.sent} bytes sent"
        self.committed = offset
        return None


class Scanner:
    """Walks a recorded stream's whole entries from a known place, fed in reads of any size.

    ``offset`` and ``records`` say where the walk starts (an entry boundary) and how
    many frames the stream held before it. After each :meth:`feed`, :attr:`offset` is
    the end of the last whole entry, :attr:`records` the frames up to there, and
    :attr:`marks` every ``FRAMES`` entry's ``(end offset, records)``. Connections that
    were opened or sent frames and never closed are in :attr:`open`; the highest
    connection number seen is :attr:`last_connection`. Bytes that cannot begin an
    entry (a write cut short by a crash) stop the walk: :attr:`error` says why, and
    :attr:`pending` counts what was not taken.
    """

    def __init__(self, offset: int = 0, records: int = 0) -> None:
        self.offset = offset
        self.records = records
        self.marks: list[tuple[int, int]] = []
        self.open: set[int] = set()
        self.last_connection = 0
        self.error: FrameError | None = None
        self._buf = b""

    @property
    def pending(self) -> int:
        return len(self._buf)

    def feed(self, data: bytes) -> None:
        if self.error is not None:
            self._buf += data
            return
        buf = self._buf + data if self._buf else bytes(data)
        view = memoryview(buf)
        pos, end = 0, len(buf)
        while end - pos >= ENTRY.size:
            n, kind, connection = ENTRY.unpack_from(buf, pos)
            if n < ENTRY_TAIL or kind not in (OPENED, FRAMES, CLOSED):
                self.error = FrameError(f"no entry can start at offset {self.offset}: n={n} "
                                        f"kind={kind}")  # fmt: skip
                break
            stop = pos + LENGTH.size + n
            if stop > end:
                break
            if kind == FRAMES:
                try:
                    self.records += count_frames(view[pos + ENTRY.size : stop])
                except FrameError as err:
                    self.error = FrameError(f"the entry at offset {self.offset}: {err}")
                    break
                self.marks.append((self.offset + stop - pos, self.records))
            if kind == CLOSED:
                self.open.discard(connection)
            else:
                self.open.add(connection)
            self.last_connection = max(self.last_connection, connection)
            self.offset += stop - pos
            pos = stop
        self._buf = buf[pos:]
