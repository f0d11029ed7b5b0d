"""The exactly-once sink protocol (``--exactly-once``): its bytes and the worker's half, no I/O.

Without ``--exactly-once`` a sink connection carries the encoder's bytes
verbatim (machida.md §6.3). With it, every output of a pipeline is a
numbered record of a *stream*: the outputs of one key (the key of the last
state step the message passed; a pipeline without one has a single stream),
named by the pipeline's index, the key's index and an *epoch*, a random
number drawn when the key's numbering starts. The numbering lives with the
key: it is logged with the key's state and moves with it when the key moves
to another worker, so the receiver sees each stream numbered 1, 2, 3, …
whichever worker emitted it. Frames are ``u32be length | kind byte | body``:

| kind | direction | body |
|---|---|---|
| ``H`` | worker → receiver | JSON ``{"worker": name, "streams": [[p, key, epoch], …]}`` |
| ``K`` | receiver → worker | *marks*: ``u32be n``, then n times ``u16be p, u32be key, …`` |
| ``O`` | worker → receiver | runs: ``u16be p, u32be key, u64be epoch, u64be first, …`` |
| ``A`` | receiver → worker | marks, as ``K`` |

The hello names the streams of which the worker holds output that was not
acknowledged; ``K`` answers with the last record of each of those streams the
receiver holds durably (a stream it has never seen is left out), each mark
``u16be p, u32be key, u64be epoch, u64be seq``. An ``O`` run is
``u16be p, u32be key, u64be epoch, u64be first, u32be count``, then a table of
``count`` u32be lengths, then the records (the encoder's bytes) one after the
other: both ends handle a run with a few calls, not a few per record
(:class:`Records`). ``A`` says that every record of those streams up to the
mark is durable at the receiver.

A worker sends ``H`` on each (re)connection and nothing else until ``K``
arrives; it then forgets what ``K`` says is held and sends the rest again, in
order, followed by new output. The receiver keeps a record only if it is the
next of its stream (it skips what it holds; a record past the next one of a
stream it knows is a gap, which it refuses). :class:`SinkBacklog` is the
worker's record of what was sent and not yet acknowledged, which its event log
also keeps; :class:`OutgoingSink` is one connection's view of it.
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from collections import deque
from collections.abc import Iterator, Sequence
from typing import NamedTuple, Union

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder, parse_frames

HELLO = 0x48  # "H"
MARKS = 0x4B  # "K"
OUTPUTS = 0x4F  # "O"
ACKS = 0x41  # "A"
# The key index of the one stream of a pipeline that has no state step.
NO_KEY = 0xFFFFFFFF
# The largest frame either side accepts; a worker cuts its output frames to fit. Room for one
# output as large as a framed receiver takes (16 MiB) twice over.
MAX_SINK_FRAME = 32 * 1024 * 1024

_HEAD = struct.Struct(">IB")
_COUNT = struct.Struct(">I")
_MARK = struct.Struct(">HIQQ")
_RUN = struct.Struct(">HIQQI")
_U64_MAX = (1 << 64) - 1
_SWAP = sys.byteorder == "little"
_U32 = "I" if array("I").itemsize == 4 else "L"  # an array of u32 lengths


class Stream(NamedTuple):
    """The outputs of one key of one pipeline, numbered since ``epoch`` was drawn."""

    pipeline: int
    key: int
    epoch: int

    def __str__(self) -> str:
        key = "-" if self.key == NO_KEY else str(self.key)
        return f"{self.pipeline}/{key}/{self.epoch:016x}"


class Records(Sequence):
    """The records of a decoded run: their lengths and their bytes one after the other, kept
    as they arrived; a slice is another :class:`Records`, made without touching each record
    (what a receiver skips of a run, what a worker forgets of its backlog)."""

    __slots__ = ("data", "lengths")

    def __init__(self, lengths: array, data: bytes) -> None:
        self.lengths, self.data = lengths, data

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index):
        if not isinstance(index, slice) or index.step not in (None, 1):
            return list(self)[index]
        start, stop, _ = index.indices(len(self.lengths))
        stop = max(start, stop)
        head = sum(self.lengths[:start])
        end = head + sum(self.lengths[start:stop])
        return Records(self.lengths[start:stop], self.data[head:end])

    def __iter__(self) -> Iterator[bytes]:
        pos = 0
        for length in self.lengths:
            yield self.data[pos : pos + length]
            pos += length

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (list, Records)):
            return list(self) == list(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Records({list(self)!r})"


Values = Union[list, Records]


def joined(values: Values) -> bytes:
    """The records' bytes one after the other."""
    return values.data if isinstance(values, Records) else b"".join(values)


def size(values: Values) -> int:
    """How many bytes the records hold."""
    return len(values.data) if isinstance(values, Records) else sum(map(len, values))


class OutputRun(NamedTuple):
    """Records ``first`` .. ``first + len(values) - 1`` of ``stream``: the encoder's bytes (a
    list, or the :class:`Records` of a decoded run)."""

    stream: Stream
    first: int
    values: Values


class SinkHello(NamedTuple):
    worker: str
    streams: list[Stream]


class SinkMarks(NamedTuple):
    """The receiver holds each stream up to its mark (the answer to a hello)."""

    marks: dict[Stream, int]


class SinkOutputs(NamedTuple):
    runs: list[OutputRun]


class SinkAcks(NamedTuple):
    """Each stream up to its mark is durable at the receiver."""

    marks: dict[Stream, int]


SinkEvent = Union[SinkHello, SinkMarks, SinkOutputs, SinkAcks]


def hello(worker: str, streams: list[Stream]) -> bytes:
    body = json.dumps({"worker": worker, "streams": [list(s) for s in streams]}).encode()
    return _HEAD.pack(1 + len(body), HELLO) + body


def marks(held: dict[Stream, int], kind: int = MARKS) -> bytes:
    """A ``K`` frame (or, with ``kind=ACKS``, an ``A`` frame) of ``held``."""
    parts = [_COUNT.pack(len(held))]
    parts += [_MARK.pack(*stream, seq) for stream, seq in held.items()]
    body = b"".join(parts)
    return _HEAD.pack(1 + len(body), kind) + body


def acks(held: dict[Stream, int]) -> bytes:
    return marks(held, ACKS)


def outputs(runs: list[OutputRun]) -> list[bytes]:
    """``O`` frames for ``runs``, each within :data:`MAX_SINK_FRAME` (one unless very large)."""
    frames: list[bytes] = []
    parts: list[bytes] = []
    used = 1
    for stream, first, values in runs:
        start = 0
        while start < len(values):
            n = _fitting(values, start, MAX_SINK_FRAME - used - _RUN.size)
            if n == 0 and parts:  # this frame is full: start the next one
                frames.append(_frame(parts, used))
                parts, used = [], 1
                continue
            n = max(n, 1)  # one output larger than a frame goes alone (the receiver refuses it)
            piece = values[start : start + n] if start or n < len(values) else values
            table = array(_U32, piece.lengths if isinstance(piece, Records) else map(len, piece))
            if _SWAP:
                table.byteswap()
            data = joined(piece)
            parts += [_RUN.pack(*stream, first + start, n), table.tobytes(), data]
            used += _RUN.size + 4 * n + len(data)
            start += n
    if parts:
        frames.append(_frame(parts, used))
    return frames


def _frame(parts: list[bytes], used: int) -> bytes:
    return _HEAD.pack(used, OUTPUTS) + b"".join(parts)


def _fitting(values: Values, start: int, room: int) -> int:
    """How many records from ``start`` fit in ``room`` bytes (all of them, usually)."""
    rest = values[start:] if start else values
    if 4 * len(rest) + size(rest) <= room:
        return len(rest)
    n = 0
    for v in rest:
        room -= 4 + len(v)
        if room < 0:
            break
        n += 1
    return n


class SinkDecoder:
    """Bytes in, :data:`SinkEvent` values out; a frame that cannot be trusted sets
    :attr:`error` (the events before it are returned) and stops the decoder."""

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_SINK_FRAME, min_length=1)
        self.error: FrameError | None = None

    @property
    def pending(self) -> int:
        return self._frames.pending

    def feed(self, data: bytes) -> list[SinkEvent]:
        if self.error is not None:
            return []
        events, self.error = parse_frames(self._frames, data, _event)
        return events


def _event(frame: bytes) -> SinkEvent:
    kind = frame[0]
    if kind == OUTPUTS:
        return SinkOutputs(_runs(frame))
    if kind == ACKS:
        return SinkAcks(_marks(frame))
    if kind == MARKS:
        return SinkMarks(_marks(frame))
    if kind == HELLO:
        return _hello(frame)
    raise FrameError(f"not a frame of the exactly-once sink protocol (kind byte {kind!r})")


def _hello(frame: bytes) -> SinkHello:
    info = json.loads(frame[1:])
    worker, streams = info["worker"], info["streams"]
    if not isinstance(worker, str) or not isinstance(streams, list):
        raise FrameError(f"a sink hello without a worker and streams: {info!r:.120}")
    return SinkHello(worker, [_stream(s) for s in streams])


def _stream(value: object) -> Stream:
    if (not isinstance(value, list) or len(value) != 3
            or not all(v.__class__ is int for v in value)):  # fmt: skip
        raise FrameError(f"not a stream [pipeline, key, epoch]: {value!r:.80}")
    p, key, epoch = value
    if not (0 <= p <= 0xFFFF and 0 <= key <= NO_KEY and 0 <= epoch <= _U64_MAX):
        raise FrameError(f"a stream out of range: {value!r:.80}")
    return Stream(p, key, epoch)


def _marks(frame: bytes) -> dict[Stream, int]:
    (n,) = _COUNT.unpack_from(frame, 1)
    if 5 + n * _MARK.size != len(frame):
        raise FrameError(f"a marks frame of {len(frame)} bytes announces {n} marks")
    out = {}
    for pos in range(5, len(frame), _MARK.size):
        p, key, epoch, seq = _MARK.unpack_from(frame, pos)
        out[Stream(p, key, epoch)] = seq
    return out


def _runs(frame: bytes) -> list[OutputRun]:
    out = []
    pos, end = 1, len(frame)
    while pos < end:
        p, key, epoch, first, count = _RUN.unpack_from(frame, pos)
        pos += _RUN.size
        if first == 0:
            raise FrameError("output records are numbered from 1")
        table = pos + 4 * count
        if table > end:
            raise FrameError(f"a run of {count} outputs overruns its frame")
        lengths = array(_U32)
        lengths.frombytes(frame[pos:table])
        if _SWAP:
            lengths.byteswap()
        stop = table + sum(lengths)
        if stop > end:
            raise FrameError(f"outputs of {stop - table} bytes overrun their frame")
        out.append(OutputRun(Stream(p, key, epoch), first, Records(lengths, frame[table:stop])))
        pos = stop
    return out


class SinkBacklog:
    """What a worker sent to one sink and the receiver has not acknowledged: per stream, its
    records in order, until an ack (or the answer to a hello) says they are held."""

    __slots__ = ("_held", "acked", "bytes", "records")

    def __init__(self) -> None:
        self._held: dict[Stream, deque[tuple[int, Values]]] = {}
        self.acked: dict[Stream, int] = {}  # the highest mark heard of each stream
        self.records = 0
        self.bytes = 0

    def add(self, runs: list[OutputRun]) -> None:
        """Keep ``runs`` (numbered, in order after what is kept of each stream)."""
        for stream, first, values in runs:
            self._held.setdefault(stream, deque()).append((first, values))
            self.records += len(values)
            self.bytes += size(values)

    def ack(self, held: dict[Stream, int]) -> bool:
        """Forget every record up to each stream's mark; whether any was forgotten."""
        freed = False
        for stream, mark in held.items():
            if mark > self.acked.get(stream, 0):
                self.acked[stream] = mark
            runs = self._held.get(stream)
            while runs:
                first, values = runs[0]
                drop = min(mark - first + 1, len(values))
                if drop <= 0:
                    break
                freed = True
                self.records -= drop
                self.bytes -= size(values[:drop])
                if drop == len(values):
                    runs.popleft()
                else:
                    runs[0] = (first + drop, values[drop:])
            if runs is not None and not runs:
                del self._held[stream]
        return freed

    def streams(self) -> list[Stream]:
        return list(self._held)

    def runs(self) -> list[OutputRun]:
        """Everything kept, as runs (per stream, in order)."""
        return [OutputRun(stream, first, values) for stream, runs in self._held.items()
                for first, values in runs]  # fmt: skip

    def replay(self) -> list[bytes]:
        """``O`` frames carrying everything kept again."""
        return outputs(self.runs())

    def clear(self) -> None:
        self._held.clear()
        self.records = self.bytes = 0


class OutgoingSink:
    """One pipeline's sink as the worker's data plane keeps it: the backlog, and the
    conversation on the current connection (hello sent, marks awaited, then streaming)."""

    __slots__ = ("backlog", "decoder", "ready")

    def __init__(self) -> None:
        self.backlog = SinkBacklog()
        self.decoder = SinkDecoder()
        self.ready = False  # the receiver answered this connection's hello

    def opened(self, worker: str) -> bytes:
        """A new connection: a fresh decoder, and the hello to send first."""
        self.decoder = SinkDecoder()
        self.ready = False
        return hello(worker, self.backlog.streams())

    def read(self, data: bytes) -> tuple[list[bytes], bool]:
        """The receiver's bytes: the frames to send now (after the answer to the hello,
        everything it does not hold), and whether anything was acknowledged."""
        resend: list[bytes] = []
        freed = False
        for event in self.decoder.feed(data):
            if isinstance(event, SinkMarks) and not self.ready:
                freed |= self.backlog.ack(event.marks)
                self.ready = True
                resend = self.backlog.replay()
            elif isinstance(event, SinkAcks) and self.ready:
                freed |= self.backlog.ack(event.marks)
            else:
                what = type(event).__name__
                self.decoder.error = FrameError(f"a {what} from the receiver at this point")
                break
        return resend, freed
