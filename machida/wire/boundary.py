"""Boundaries, the data channels between workers: their bytes and both halves, with no I/O.

A message whose key lives on another worker crosses a boundary. Each
direction between two workers is its own TCP connection, dialled by the
sender; the receiver answers on it with acknowledgements. Frames are
``u32be length | kind byte | body``:

| kind | body | meaning |
|---|---|---|
| ``H`` | JSON ``{"worker": name, "incarnation": n}`` | first frame of a connection: who sends |
| ``M`` | ``u64be first_seq``, records | a batch, numbered first_seq, first_seq+1, … |
| ``A`` | ``u64be seq`` | receiver → sender: every record up to ``seq`` is applied |

A batch body is ``u64be first_seq`` followed by *runs*: consecutive records
for the same route (pipeline, state step position, key index) and of the same
kind. A run is ``u8 kind | u16be pipeline | u16be step | u32be key index |
u32be count`` and then either ``count`` u64be integers (kind 1: messages that
are plain ``int`` in 0..2**64-1, sent without pickling because they round-trip
identically) or ``count`` times ``u32be length | payload`` (kind 0: the
message as the application's ``serialize`` made it; kind 2: the state of the
key, as ``serialize`` made it, handed over to the receiver when the key moves
to it in a grow or shrink, in the same order as the messages; kind 3: with it,
the numbering of the key's exactly-once output streams, :func:`encode_counters`).
Records are numbered
first_seq, first_seq+1, … across the runs. Sequence numbers count per sending
process *incarnation* (a random number drawn at start), so a restarted sender
is never mistaken for a replay.

The data plane keeps two halves per boundary. :class:`OutgoingBoundary` (one per
downstream worker) holds a :class:`Backlog`: records are grouped into runs as
they are added, wait until acknowledged, and are sent again, in order, after a
reconnection. :class:`IncomingBoundary` (one per connection from an upstream
worker) decodes what arrives (:class:`BoundaryDecoder`, which returns the typed
events :class:`Hello`, :class:`BatchEvent` and :class:`Ack`) and says when to
acknowledge; :class:`Dedup` (one per upstream worker, across its connections)
drops records already applied. The asyncio shells around the halves are
:mod:`machida.runtime.boundary`.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections import deque
from typing import NamedTuple, Union

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder, parse_frames

HELLO = 0x48  # "H"
BATCH = 0x4D  # "M"
ACK = 0x41  # "A"
# The kinds of run in a batch (the u8 that starts a run).
SERIALIZED = 0
INTS = 1
STATE = 2
COUNTERS = 3

_FRAME_HEAD = struct.Struct(">IB")
_BATCH_HEAD = struct.Struct(">IBQ")
_SEQ = struct.Struct(">Q")
_RUN = struct.Struct(">BHHII")
_LEN = struct.Struct(">I")
_COUNTER = struct.Struct(">HQQ")
U64_MAX = (1 << 64) - 1
_SWAP = sys.byteorder == "little"
# Replays are cut into batches of at most this many records (the link's pause mark), so that the
# receiver applies and acknowledges a long replay as it goes instead of all at once.
MAX_BATCH_RECORDS = 16_384
# The largest data frame a receiver accepts; a sender cuts its batches to fit. It leaves room
# for one message as large as a source payload may be (16 MiB) twice over, for what serialize
# adds. A longer frame is refused at its header, never buffered.
MAX_DATA_FRAME = 32 * 1024 * 1024
# While a sink holds output in user space, an acknowledgement is retried this often
# (asyncio has no event for "the transport's buffer is empty", so the shell polls).
ACK_RETRY_S = 0.002
# A boundary is acknowledged at most this often. An acknowledgement only frees the upstream's
# backlog (whose pause mark, 16,384 records, is far), but each one wakes the upstream worker,
# whose data path then waits behind it: at 50,000 msgs/s, one per batch made a third of the
# initializer's wake-ups. Five milliseconds of records is little backlog at any rate.
ACK_EVERY_S = 0.005
# What a batch spends besides its records' bytes: the kind and first sequence number, and the
# head of each run.
_BATCH_OVERHEAD = 1 + _SEQ.size
# The largest serialized message that can cross a boundary (in a batch of its own).
MAX_MESSAGE = MAX_DATA_FRAME - _BATCH_OVERHEAD - _RUN.size - _LEN.size


def hello(worker: str, incarnation: int) -> bytes:
    body = json.dumps({"worker": worker, "incarnation": incarnation}).encode()
    return _FRAME_HEAD.pack(1 + len(body), HELLO) + body


def ack(seq: int) -> bytes:
    return _FRAME_HEAD.pack(9, ACK) + _SEQ.pack(seq)


def encode_counters(counters: dict[int, tuple[int, int]]) -> bytes:
    """The one record of a kind 3 run: per pipeline, the epoch and the last number of the
    moving key's output stream (``u16be pipeline, u64be epoch, u64be seq`` each)."""
    return b"".join(_COUNTER.pack(p, epoch, seq) for p, (epoch, seq) in sorted(counters.items()))


def decode_counters(data: bytes) -> dict[int, tuple[int, int]]:
    """The counters of a kind 3 record; FrameError if its length is not whole entries."""
    if len(data) % _COUNTER.size:
        raise FrameError(f"a counters record of {len(data)} bytes")
    entries = (_COUNTER.unpack_from(data, pos) for pos in range(0, len(data), _COUNTER.size))
    return {p: (epoch, seq) for p, epoch, seq in entries}


class Batch(NamedTuple):
    """One ``M`` frame and the records it numbers: ``first`` .. ``first + records - 1``."""

    first: int
    records: int
    frame: bytes


def batches(first_seq: int, runs: list, max_records: int | None = None) -> list[Batch]:
    """``M`` frames for ``runs`` numbered from ``first_seq``, each within MAX_DATA_FRAME (and
    ``max_records``); one frame unless the runs are that large."""
    limit = MAX_DATA_FRAME - _BATCH_OVERHEAD
    frames: list[Batch] = []
    chunk: list[list] = []
    records = size = 0
    for route, kind, values in runs:
        start = 0
        while start < len(values):
            room = limit - size - _RUN.size
            n = len(values) - start
            if max_records is not None:
                n = min(n, max_records - records)
            n = min(n, room // 8) if kind == INTS else _fitting(values, start, n, room)
            if n <= 0:  # this batch is full: number the next one on
                frames.append(Batch(first_seq, records, encode_batch(first_seq, chunk)))
                first_seq += records
                chunk, records, size = [], 0, 0
                continue
            piece = values[start : start + n]
            chunk.append([route, kind, piece])
            records += n
            size += _RUN.size + (8 * n if kind == INTS else sum(_LEN.size + len(v) for v in piece))
            start += n
    if chunk:
        frames.append(Batch(first_seq, records, encode_batch(first_seq, chunk)))
    return frames


def _fitting(values: list, start: int, most: int, room: int) -> int:
    """How many serialized values from ``start`` (at most ``most``) fit in ``room`` bytes."""
    n = 0
    for v in values[start : start + most]:
        room -= _LEN.size + len(v)
        if room < 0:
            break
        n += 1
    return n


def u64_column(messages: list) -> array | None:
    """``messages`` as one column of u64s when every one is a plain ``int`` in 0..2**64-1
    (they then cross as 8 bytes each, without ``serialize``); else None.

    machida-flink's operator batches (:mod:`machida_flink.batch`) take the same column and
    send it little-endian, the order of the one host both their ends run on; a boundary
    sends it big-endian, like every other number between workers.
    """
    if not set(map(type, messages)) <= {int}:
        return None
    try:
        return array("Q", messages)
    except OverflowError:
        return None  # some int outside 0..2**64-1: serialise them all


def encode_batch(first_seq: int, runs: list) -> bytes:
    """An ``M`` frame for ``runs`` of ``[route, kind, values]``; route is (p, step, key)."""
    parts = [b""]
    size = 9
    for (p, step, key), kind, values in runs:
        parts.append(_RUN.pack(kind, p, step, key, len(values)))
        if kind == INTS:
            column = array("Q", values)  # a copy: the backlog keeps the values in order
            if _SWAP:
                column.byteswap()
            parts.append(column.tobytes())
        else:
            parts.extend(_LEN.pack(len(v)) + v for v in values)
    body = b"".join(parts)
    size += len(body)
    return _BATCH_HEAD.pack(size, BATCH, first_seq) + body


class Backlog:
    """The sending side of one link: unacknowledged records, in sequence order.

    ``add(route, is_int, values)`` queues a run of records (ints to send as
    such, or serialized bytes); ``take_batch`` hands the queued records out as
    one frame and keeps them until ``ack``; ``replay`` gives every frame
    needed to send the whole backlog again after a reconnection.
    """

    __slots__ = ("_queued", "_queued_n", "_sent", "_sent_n", "acked", "next_seq", "sent_total")

    def __init__(self) -> None:
        self._queued: list[list] = []  # runs not yet numbered: [route, is_int, values]
        self._queued_n = 0
        self._sent: deque[list] = deque()  # numbered runs: records acked+1 .. next_seq-1
        self._sent_n = 0
        self.acked = 0
        self.next_seq = 1
        self.sent_total = 0

    @property
    def unacked(self) -> int:
        """Records handed out (or queued) and not yet acknowledged."""
        return self._sent_n + self._queued_n

    def add(self, route: tuple, kind: int, values: list | array) -> None:
        """Queue a run of records of ``kind`` for ``route``: ints (a list or an
        ``array('Q')``) or bytes."""
        self._queued.append([route, kind, values])
        self._queued_n += len(values)

    def take_batch(self) -> list[Batch]:
        """The queued records, numbered, as batches (one, unless very large); none if nothing
        is queued."""
        if not self._queued_n:
            return []
        runs, count = self._queued, self._queued_n
        self._queued, self._queued_n = [], 0
        first = self.next_seq
        self.next_seq += count
        self.sent_total += count
        self._sent.extend(runs)
        self._sent_n += count
        return batches(first, runs)

    def ack(self, seq: int) -> None:
        """Forget every record up to ``seq``."""
        drop = min(seq - self.acked, self._sent_n)
        if drop <= 0:
            return
        self.acked += drop
        self._sent_n -= drop
        sent = self._sent
        while drop:
            run = sent[0]
            if len(run[2]) <= drop:
                drop -= len(run[2])
                sent.popleft()
            else:
                sent[0] = [run[0], run[1], run[2][drop:]]
                drop = 0

    def replay(self) -> list[Batch]:
        """Batches carrying every unacknowledged, already numbered record again."""
        return batches(self.acked + 1, list(self._sent), MAX_BATCH_RECORDS)

    def restore(self, first_seq: int, runs: list, next_seq: int, acked: int) -> None:
        """What an event log kept: the records numbered from ``first_seq`` (as runs), the next
        number to give, and how far the receiver had acknowledged."""
        self._queued, self._queued_n = [], 0
        self._sent = deque(runs)
        self._sent_n = sum(len(run[2]) for run in runs)
        if first_seq + self._sent_n != next_seq:
            raise ValueError(f"records {first_seq}..{next_seq - 1} logged as {self._sent_n}")
        self.acked, self.next_seq = first_seq - 1, next_seq
        self.ack(acked)
        self.acked = max(self.acked, acked)
        self.sent_total = self._sent_n


# One run of a batch: pipeline, state step position, key index, its kind (SERIALIZED, INTS or
# STATE), and the values (ints, or what the application's serialize made).
Run = tuple[int, int, int, int, list]


class Hello(NamedTuple):
    """First frame of a connection: which worker sends, and which run of it."""

    worker: str
    incarnation: int


class BatchEvent(NamedTuple):
    """Records ``first`` .. ``first + n - 1``, as runs of :data:`Run`."""

    first: int
    runs: list[Run]


class Ack(NamedTuple):
    """Every record up to ``seq`` is applied (receiver to sender)."""

    seq: int


BoundaryEvent = Union[Hello, BatchEvent, Ack]


class BoundaryDecoder:
    """Bytes in, :data:`BoundaryEvent` values out; a frame that cannot be trusted sets
    :attr:`error` (the events before it are returned) and stops the decoder."""

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_DATA_FRAME, min_length=1)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[BoundaryEvent]:
        if self.error is not None:
            return []
        events, self.error = parse_frames(self._frames, data, _event)
        return events


def _event(frame: bytes) -> BoundaryEvent:
    kind = frame[0]
    if kind == BATCH:
        return BatchEvent(_SEQ.unpack_from(frame, 1)[0], _runs(frame, 9))
    if kind == ACK:
        return Ack(_SEQ.unpack_from(frame, 1)[0])
    if kind == HELLO:
        return _hello(frame)
    raise FrameError(f"unknown data frame kind {kind!r}")


def _hello(frame: bytes) -> Hello:
    info = json.loads(frame[1:])
    worker, incarnation = info["worker"], info["incarnation"]
    if not isinstance(worker, str):
        raise FrameError(f"hello names no worker: {worker!r:.80}")
    if incarnation.__class__ is not int or not 0 <= incarnation <= U64_MAX:
        raise FrameError(f"hello has no incarnation in 0..2**64-1: {incarnation!r:.80}")
    return Hello(worker, incarnation)


def _runs(frame: bytes, pos: int) -> list[Run]:
    out: list[Run] = []
    end = len(frame)
    while pos < end:
        kind, p, step, key, count = _RUN.unpack_from(frame, pos)
        pos += _RUN.size
        if kind == INTS:
            stop = pos + 8 * count
            if stop > end:
                raise FrameError(f"a run of {count} integers overruns its batch")
            column = array("Q")
            column.frombytes(frame[pos:stop])
            if _SWAP:
                column.byteswap()
            out.append((p, step, key, INTS, column.tolist()))
            pos = stop
        elif kind in (SERIALIZED, STATE, COUNTERS):
            values = []
            for _ in range(count):
                (length,) = _LEN.unpack_from(frame, pos)
                pos += 4
                if pos + length > end:
                    raise FrameError(f"a message of {length} bytes overruns its batch")
                values.append(frame[pos : pos + length])
                pos += length
            out.append((p, step, key, kind, values))
        else:
            raise FrameError(f"unknown run kind {kind}")
    return out


class Dedup:
    """What a receiver has applied from each upstream incarnation.

    ``skip(first_seq, count)`` says how many leading records of a batch were
    already applied; ``applied(upto)`` records progress. Once anything is known
    of an incarnation (a batch applied, or a log restored), a batch that starts
    past the next record is a gap (:meth:`gap`): accepting it would skip records.
    A receiver that knows nothing of an incarnation yet takes its first batch as
    the start (after a restart without a log, the upstream re-sends from what it
    had acknowledged).
    """

    __slots__ = ("incarnation", "known", "seq")

    def __init__(self) -> None:
        self.incarnation: int | None = None
        self.seq = 0
        self.known = False

    def start(self, incarnation: int) -> None:
        """A (re)connection from ``incarnation``: a new one starts from zero."""
        if incarnation != self.incarnation:
            self.incarnation = incarnation
            self.seq = 0
            self.known = False

    def restore(self, incarnation: int, seq: int) -> None:
        """What a log says was applied from ``incarnation``."""
        self.incarnation, self.seq, self.known = incarnation, seq, True

    def gap(self, first_seq: int) -> bool:
        return self.known and first_seq > self.seq + 1

    def skip(self, first_seq: int, count: int) -> int:
        return max(0, min(count, self.seq - first_seq + 1))

    def applied(self, upto: int) -> None:
        self.seq = max(self.seq, upto)
        self.known = True


# -- the two halves of a boundary, as the data plane keeps them --------------------------------


class OutgoingBoundary:
    """The sending half towards one downstream worker: its backlog, and the acknowledgements
    read back on the current connection."""

    __slots__ = ("backlog", "decoder", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.backlog = Backlog()
        self.decoder = BoundaryDecoder()

    def opened(self, me: str, incarnation: int) -> list[bytes]:
        """A new connection: a fresh decoder; the hello, then the whole unacknowledged backlog."""
        self.decoder = BoundaryDecoder()
        return [hello(me, incarnation), *(batch.frame for batch in self.backlog.replay())]

    def read(self, data: bytes) -> bool:
        """Acknowledgements in; whether any arrived (anything else is an error)."""
        events = self.decoder.feed(data)
        for event in events:
            if not isinstance(event, Ack):
                self.decoder.error = FrameError(f"a {type(event).__name__} on an ack stream")
                return False
            self.backlog.ack(event.seq)
        return bool(events)

    def restore(self, acked: int, next_seq: int, frames: list[bytes]) -> None:
        """What an event log kept of this boundary: its batches (re-sent, under the same
        numbers, on the next connection), the next number to give and the acknowledged mark."""
        first, runs = next_seq, []
        for frame in frames:
            (event,) = BoundaryDecoder().feed(frame)
            assert isinstance(event, BatchEvent), "the event log keeps batches only"
            first = min(first, event.first)
            runs += [[(p, step, key), ints, values] for p, step, key, ints, values in event.runs]
        self.backlog.restore(first, runs, next_seq, acked)


class IncomingBoundary:
    """The receiving half of one connection from an upstream worker: who sends on it, what was
    applied from it, and when to acknowledge.

    An acknowledgement goes once the output of what was applied has left for the kernel
    (never while ``sinks_busy``) and at most every :data:`ACK_EVERY_S`: :meth:`ack_wait`
    says how long to wait, the shell keeps the time.
    """

    __slots__ = ("_acked_at", "acked", "applied", "decoder", "upstream")

    def __init__(self) -> None:
        self.decoder = BoundaryDecoder()
        self.upstream: str | None = None
        self.applied = 0  # highest sequence number applied from this connection
        self.acked = 0  # highest sequence number acknowledged on it
        self._acked_at = float("-inf")

    @property
    def owes_ack(self) -> bool:
        return self.applied > self.acked

    def ack_wait(self, now: float, sinks_busy: bool) -> float | None:
        """None when nothing is owed; else the seconds to wait before acknowledging (0: now)."""
        if not self.owes_ack:
            return None
        if sinks_busy:
            return ACK_RETRY_S
        return max(0.0, self._acked_at + ACK_EVERY_S - now)

    def take_ack(self, now: float = 0.0) -> bytes:
        """The acknowledgement of everything applied so far, sent at ``now``."""
        self.acked, self._acked_at = self.applied, now
        return ack(self.applied)
