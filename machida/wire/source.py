"""Sans-I/O framing of a TCP source with the application's own decoder.

A machida source reads ``header_length()`` bytes, asks ``payload_length(header)``
how many bytes follow, and hands exactly that many to ``decode``. This codec
does the first two for a whole socket read at once and returns the payloads;
the caller decodes them. ``payload_length`` is called exactly once per frame,
even when the payload arrives in a later read. A length that is not an int in
1..16 MiB (or a raising ``payload_length``) makes the stream untrustworthy:
the frames before it are returned and :attr:`SourceFramer.error` says why.
"""

from __future__ import annotations

from typing import Any

from machida.wire.framing import Carry

# The largest payload a source accepts (16 MiB), as Wallaroo's framed readers.
MAX_PAYLOAD = 16 * 1024 * 1024


class BadLength:
    """Why a source stream lost its framing: the length given, or the exception raised."""

    __slots__ = ("callback", "exc", "length")

    def __init__(self, callback: str, length: Any = None, exc: BaseException | None = None):
        self.callback = callback
        self.length = length
        self.exc = exc

    def __repr__(self) -> str:
        return f"BadLength({self.callback!r}, length={self.length!r}, exc={self.exc!r})"


class SourceFramer:
    """Splits one source connection's bytes into payloads using the decoder's framing;
    ``callback`` is how errors name its ``payload_length`` (``<Class>.payload_length``)."""

    __slots__ = ("_carry", "_header_length", "_need", "_payload_length", "callback", "error")

    def __init__(self, decoder: Any, header_length: int,
                 callback: str = "payload_length") -> None:  # fmt: skip
        self._payload_length = decoder.payload_length
        self._header_length = header_length
        self._carry = Carry()
        self._need = -1  # payload bytes owed for a header already read, or -1
        self.callback = callback
        self.error: BadLength | None = None

    @property
    def pending(self) -> int:
        """Bytes held for a frame that is not complete yet (header included)."""
        return len(self._carry)

    def feed(self, data: bytes) -> list[bytes]:
        if self.error is not None:
            return []
        buf = self._carry.join(data)
        if buf is None:
            return []
        wait = 0
        hl = self._header_length
        end = len(buf)
        pos = 0
        need = self._need
        frames: list[bytes] = []
        append = frames.append
        payload_length = self._payload_length
        while True:
            if need < 0:
                if end - pos < hl:
                    break
                try:
                    need = payload_length(buf[pos : pos + hl])
                except Exception as exc:
                    return self._fail(frames, BadLength(self.callback, exc=exc))
                if need.__class__ is not int:
                    if not _is_int(need):
                        return self._fail(frames, BadLength(self.callback, length=need))
                    need = int(need)
                if not 0 < need <= MAX_PAYLOAD:
                    return self._fail(frames, BadLength(self.callback, length=need))
            stop = pos + hl + need
            if stop > end:
                wait = stop - end
                break
            append(buf[pos + hl : stop])
            pos = stop
            need = -1
        self._need = need
        self._carry.keep(buf[pos:] if pos else buf, wait)
        return frames

    def _fail(self, frames: list[bytes], why: BadLength) -> list[bytes]:
        self.error = why
        self._carry.clear()
        self._need = -1
        return frames


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)
