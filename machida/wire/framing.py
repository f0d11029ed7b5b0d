"""Sans-I/O codec for ``u32be length | payload`` frames.

Every byte stream in this project that is not a source (the sink stream that
data_receiver reads, the external channel, the channels between our own
workers) is framed this way. The codec is fed whatever a socket read gave and
returns every complete payload in it at once, so callers handle a batch per
read instead of a frame per await. It imports no I/O module.
"""

from __future__ import annotations

import struct
from typing import Callable, TypeVar

from machida.errors import FrameError

T = TypeVar("T")

HEADER = struct.Struct(">I")
# Wallaroo's tools refuse frames above 16 MiB; so does every framed reader here.
MAX_FRAME = 16 * 1024 * 1024


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its u32be length."""
    return HEADER.pack(len(payload)) + payload


class Carry:
    """The bytes of an unfinished frame, kept from one read to the next.

    When a frame's length is known and the read falls short of it, the reads
    are only collected, and joined once the frame is complete, so a large
    frame arriving in many small reads costs time linear in its size.
    """

    __slots__ = ("_head", "_parts", "wait")

    def __init__(self) -> None:
        self._head = b""
        self._parts: list[bytes] = []
        self.wait = 0  # bytes still missing from a frame whose length is known

    def __len__(self) -> int:
        return len(self._head) + sum(map(len, self._parts))

    def join(self, data: bytes) -> bytes | None:
        """What is carried followed by ``data``; ``None`` while the awaited frame is incomplete."""
        if self.wait > len(data):
            self._parts.append(bytes(data))
            self.wait -= len(data)
            return None
        if self._parts:
            buf = b"".join([self._head, *self._parts, data])
            self._parts = []
            return buf
        return self._head + data if self._head else bytes(data)

    def keep(self, rest: bytes, wait: int) -> None:
        """Carry ``rest`` (the start of the next frame); ``wait`` bytes of it are known missing."""
        self._head = rest
        self.wait = wait

    def clear(self) -> None:
        self.keep(b"", 0)
        self._parts = []


class FrameDecoder:
    """Splits a byte stream into ``u32be length | payload`` frames.

    ``feed(data)`` returns the payloads completed by ``data``, in order. A
    length outside ``min_length..max_length`` makes the stream untrustworthy:
    the frames before it are still returned, :attr:`error` is set to a
    :class:`FrameError`, and every later feed returns nothing.
    """

    __slots__ = ("_carry", "error", "max_length", "min_length")

    def __init__(self, max_length: int = MAX_FRAME, min_length: int = 0) -> None:
        self._carry = Carry()
        self.max_length = max_length
        self.min_length = min_length
        self.error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._carry)

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        buf = self._carry.join(data)
        if buf is None:
            return []
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        wait = 0
        unpack = HEADER.unpack_from
        while end - pos >= 4:
            (length,) = unpack(buf, pos)
            if length > self.max_length or length < self.min_length:
                self.error = FrameError(
                    f"frame length {length} is outside {self.min_length}..{self.max_length}",
                    length=length,
                )
                self._carry.clear()
                return frames
            stop = pos + 4 + length
            if stop > end:
                wait = stop - end
                break
            frames.append(buf[pos + 4 : stop])
            pos = stop
        self._carry.keep(buf[pos:], wait)
        return frames


# What a frame's parser raises for bytes it cannot make sense of (each becomes a FrameError).
UNTRUSTED = (struct.error, ValueError, KeyError, TypeError, RecursionError, FrameError)


def parse_frames(frames: FrameDecoder, data: bytes,
                 parse: Callable[[bytes], T]) -> tuple[list[T], FrameError | None]:  # fmt: skip
    """``parse`` each frame ``data`` completes: the events, in order, and why the stream
    cannot be trusted any more (the first frame ``parse`` refused, or a bad length), if so;
    the events before the bad frame are still returned."""
    events: list[T] = []
    for frame in frames.feed(data):
        try:
            events.append(parse(frame))
        except UNTRUSTED as err:
            return events, err if isinstance(err, FrameError) else FrameError(str(err))
    return events, frames.error
