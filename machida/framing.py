"""Sans-I/O codec for ``u32be length | payload`` frames.

Every byte stream in this project that is not a source (the sink stream that
data_receiver reads, the external channel, the channels between our own
workers) is framed this way. The codec is fed whatever a socket read gave and
returns every complete payload in it at once, so callers handle a batch per
read instead of a frame per await. It imports no I/O module.
"""

from __future__ import annotations

import struct

from machida.errors import FrameError

HEADER = struct.Struct(">I")
# Wallaroo's tools refuse frames above 16 MiB; so does every framed reader here.
MAX_FRAME = 16 * 1024 * 1024


def encode_frame(payload: bytes) -> bytes:
    """Prefix ``payload`` with its u32be length."""
    return HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Splits a byte stream into ``u32be length | payload`` frames.

    ``feed(data)`` returns the payloads completed by ``data``, in order. A
    length outside ``min_length..max_length`` makes the stream untrustworthy:
    the frames before it are still returned, :attr:`error` is set to a
    :class:`FrameError`, and every later feed returns nothing.
    """

    __slots__ = ("_buf", "_parts", "_wait", "error", "max_length", "min_length")

    def __init__(self, max_length: int = MAX_FRAME, min_length: int = 0) -> None:
        self._buf = b""
        # A large frame arriving in many reads is collected here and joined
        # once it is complete, so its cost stays linear in its size.
        self._parts: list[bytes] = []
        self._wait = 0  # bytes still missing from the frame in _buf + _parts
        self.max_length = max_length
        self.min_length = min_length
        self.error: FrameError | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a frame not yet complete."""
        return len(self._buf) + sum(map(len, self._parts))

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        if self._wait > len(data):
            self._parts.append(bytes(data))
            self._wait -= len(data)
            return []
        if self._parts:
            buf = b"".join([self._buf, *self._parts, data])
            self._parts = []
        else:
            buf = self._buf + data if self._buf else bytes(data)
        frames: list[bytes] = []
        pos = 0
        end = len(buf)
        unpack = HEADER.unpack_from
        self._wait = 0
        while end - pos >= 4:
            (length,) = unpack(buf, pos)
            if length > self.max_length or length < self.min_length:
                self.error = FrameError(
                    f"frame length {length} is outside {self.min_length}..{self.max_length}",
                    length=length,
                )
                self._buf = b""
                return frames
            stop = pos + 4 + length
            if stop > end:
                self._wait = stop - end
                break
            frames.append(buf[pos + 4 : stop])
            pos = stop
        self._buf = buf[pos:]
        return frames
