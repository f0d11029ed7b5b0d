"""Sans-I/O codec and bookkeeping for boundaries, the data links between workers.

A message whose key lives on another worker crosses a boundary. Each
direction between two workers is its own TCP connection, dialled by the
sender; the receiver answers on it with acknowledgements. Frames are
``u32be length | kind byte | body``:

| kind | body | meaning |
|---|---|---|
| ``H`` | JSON ``{"worker": name, "incarnation": n}`` | first frame of a connection: who sends |
| ``M`` | ``u64be first_seq``, records | a batch, numbered first_seq, first_seq+1, … |
| ``A`` | ``u64be seq`` | receiver → sender: every record up to ``seq`` is applied |

A record is ``u16be pipeline | u16be step | u32be key index | u32be length |
payload``, where the payload is the message serialised by the application's
``serialize`` and ``step`` is the position of the state step that owns the
key. Sequence numbers count per sending process *incarnation* (a random
number drawn at start), so a restarted sender is never mistaken for a replay.

:class:`Backlog` is the sender's side: records wait there until acknowledged
and are sent again, in order, after a reconnection. :class:`BoundaryDecoder`
is the receiver's side of the bytes; :class:`Dedup` drops records a receiver
has already applied.
"""

from __future__ import annotations

import json
import struct
from collections import deque

from machida.errors import FrameError
from machida.framing import FrameDecoder

HELLO = 0x48  # "H"
BATCH = 0x4D  # "M"
ACK = 0x41  # "A"

_FRAME_HEAD = struct.Struct(">IB")
_BATCH_HEAD = struct.Struct(">IBQ")
_SEQ = struct.Struct(">Q")
_RECORD = struct.Struct(">HHII")
# A frame of at most this size is written per batch; longer backlogs are split.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Largest frame a receiver accepts: a batch plus one oversized record.
MAX_DATA_FRAME = 64 * 1024 * 1024


def record(pipeline: int, step: int, key_index: int, payload: bytes) -> bytes:
    """One message as it travels in a batch."""
    return _RECORD.pack(pipeline, step, key_index, len(payload)) + payload


def hello(worker: str, incarnation: int) -> bytes:
    body = json.dumps({"worker": worker, "incarnation": incarnation}).encode()
    return _FRAME_HEAD.pack(1 + len(body), HELLO) + body


def ack(seq: int) -> bytes:
    return _FRAME_HEAD.pack(9, ACK) + _SEQ.pack(seq)


def batch(first_seq: int, records: list[bytes]) -> bytes:
    body = b"".join(records)
    return _BATCH_HEAD.pack(9 + len(body), BATCH, first_seq) + body


class Backlog:
    """The sending side of one link: unacknowledged records, in sequence order.

    ``add`` queues a record; ``take_batch`` hands the queued records out as
    one frame and keeps them until ``ack``; ``replay`` gives every frame
    needed to send the whole backlog again after a reconnection.
    """

    __slots__ = ("_queued", "_sent", "acked", "next_seq", "sent_total")

    def __init__(self) -> None:
        self._queued: list[bytes] = []
        self._sent: deque[bytes] = deque()  # records acked+1 .. next_seq-1, in order
        self.acked = 0
        self.next_seq = 1
        self.sent_total = 0

    @property
    def unacked(self) -> int:
        """Records handed out (or queued) and not yet acknowledged."""
        return len(self._sent) + len(self._queued)

    def add(self, rec: bytes) -> None:
        self._queued.append(rec)

    def take_batch(self) -> bytes | None:
        """The queued records as one ``M`` frame, or ``None`` if nothing is queued."""
        if not self._queued:
            return None
        records, self._queued = self._queued, []
        first = self.next_seq
        self.next_seq += len(records)
        self.sent_total += len(records)
        self._sent.extend(records)
        return batch(first, records)

    def ack(self, seq: int) -> None:
        """Forget every record up to ``seq``."""
        drop = min(seq - self.acked, len(self._sent))
        for _ in range(max(0, drop)):
            self._sent.popleft()
        self.acked = max(self.acked, seq)

    def replay(self) -> list[bytes]:
        """Frames carrying every unacknowledged, already numbered record again."""
        frames, chunk, size, first = [], [], 0, self.acked + 1
        for rec in self._sent:
            chunk.append(rec)
            size += len(rec)
            if size >= MAX_BATCH_BYTES:
                frames.append(batch(first, chunk))
                first += len(chunk)
                chunk, size = [], 0
        if chunk:
            frames.append(batch(first, chunk))
        return frames


class BoundaryDecoder:
    """Receiver side: bytes in, events out.

    ``feed`` returns a list of events: ``("hello", worker, incarnation)``,
    ``("batch", first_seq, records)`` with records as ``(pipeline, step,
    key_index, payload)`` tuples, and ``("ack", seq)``.
    """

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_DATA_FRAME, min_length=1)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[tuple]:
        events: list[tuple] = []
        for frame in self._frames.feed(data):
            kind = frame[0]
            try:
                if kind == BATCH:
                    events.append(("batch", _SEQ.unpack_from(frame, 1)[0], _records(frame, 9)))
                elif kind == ACK:
                    events.append(("ack", _SEQ.unpack_from(frame, 1)[0]))
                elif kind == HELLO:
                    info = json.loads(frame[1:])
                    events.append(("hello", str(info["worker"]), int(info["incarnation"])))
                else:
                    raise FrameError(f"unknown data frame kind {kind!r}")
            except (struct.error, ValueError, KeyError, TypeError, FrameError) as err:
                self.error = err if isinstance(err, FrameError) else FrameError(str(err))
                return events
        if self._frames.error is not None:
            self.error = self._frames.error
        return events


def _records(frame: bytes, pos: int) -> list[tuple[int, int, int, bytes]]:
    out = []
    end = len(frame)
    unpack = _RECORD.unpack_from
    while pos < end:
        pipeline, step, key_index, length = unpack(frame, pos)
        pos += 12
        if pos + length > end:
            raise FrameError(f"record of {length} bytes overruns its batch")
        out.append((pipeline, step, key_index, frame[pos : pos + length]))
        pos += length
    return out


class Dedup:
    """What a receiver has applied from each upstream incarnation.

    ``skip(first_seq, count)`` says how many leading records of a batch were
    already applied; ``applied(upto)`` records progress.
    """

    __slots__ = ("incarnation", "seq")

    def __init__(self) -> None:
        self.incarnation: int | None = None
        self.seq = 0

    def start(self, incarnation: int) -> None:
        """A (re)connection from ``incarnation``: a new one starts from zero."""
        if incarnation != self.incarnation:
            self.incarnation = incarnation
            self.seq = 0

    def skip(self, first_seq: int, count: int) -> int:
        return max(0, min(count, self.seq - first_seq + 1))

    def applied(self, upto: int) -> None:
        self.seq = max(self.seq, upto)
