"""The validator's three input layouts: ``giles``, ``framed`` and ``lines``.

A sink's output reaches the validator as a file in one of three layouts
(tools.md §5.2): what giles receiver wrote (``u32be L | u64be ts | payload``),
the raw sink stream (``u32be L | payload``), or ``data_receiver --framed``
stdout (one payload per line after a ``Listening on`` line). This module is
sans-I/O: a decoder is fed bytes and returns every record they complete as a
:class:`Batch` (stamps and payloads, side by side), and :meth:`close` says
whether the input ended cleanly. It also detects a layout from a file's first
bytes, parses a payload into a window, and writes each layout (the fixtures
and the tests use that). Nothing here opens a file or judges a window.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple

from machida.wire.framing import HEADER

GILES = "giles"
FRAMED = "framed"
LINES = "lines"
LAYOUTS = (GILES, FRAMED, LINES)

# data_receiver's first line; skipped wherever it appears at a line start.
LISTENING = b"Listening on "
# A giles record's header: u32be payload length, u64be ts.
GILES_HEADER = struct.Struct(">IQ")
# A payload is split on any of "[", " ", "]" and ",": map the first three to ",".
_DELIMITERS = bytes.maketrans(b"[ ]", b",,,")
_U64_LIMIT = 2**64
# Control characters in a bad payload are shown escaped, so the message stays one line.
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(32), 127]}


class DecodeError(Exception):
    """The input ends inside a binary record (a header or payload cut short)."""

    def __init__(self) -> None:
        super().__init__("Problem decoding!")


class WindowParseError(Exception):
    """A record's payload is not a window; the message names its ts and shows it."""

    def __init__(self, ts: Any, payload: bytes) -> None:
        text = payload.decode("utf-8", "backslashreplace").rstrip("\r\n").translate(_ESCAPES)
        super().__init__(f"Could not parse window at {ts}: {text}")
        self.ts = ts
        self.payload = payload


class Batch(NamedTuple):
    """Records decoded from one feed: ``stamps[i]`` is the ts of ``payloads[i]``."""

    stamps: Sequence[int]
    payloads: list[bytes]


def detect_layout(head: bytes) -> str:
    """The layout of a file that starts with ``head`` (at least its first 12 bytes).

    An empty file holds no records in any layout; it is reported as ``lines``.
    """
    if not head or head.startswith((b"[", b"Listening on")):
        return LINES
    if head[4:5] == b"[":
        return FRAMED
    return GILES


def parse_window(payload: bytes, ts: Any = None) -> list[int]:
    """The values of a payload such as ``[1,2,3,4]`` or ``[1, 2, 3, 4]\\n``.

    The text is split on ``[``, ``,``, space and ``]``; the first and the last
    piece are dropped (they hold what lies outside the brackets) and empty
    pieces are skipped. Every other piece must be a decimal u64, otherwise
    :class:`WindowParseError` names ``ts``.
    """
    window = []
    for piece in payload.translate(_DELIMITERS).split(b",")[1:-1]:
        if not piece:
            continue
        # bytes.isdigit() accepts ASCII digits only, unlike int().
        if not piece.isdigit():
            raise WindowParseError(ts, payload)
        value = int(piece)
        if value >= _U64_LIMIT:
            raise WindowParseError(ts, payload)
        window.append(value)
    return window


class RecordDecoder:
    """Splits one layout's byte stream into records; feed it, then close it.

    Bytes that do not yet complete a record are kept, joined only once enough
    have arrived, so a long record fed in small pieces costs linear time.
    :attr:`returned` counts the payloads returned so far; the ``framed`` and
    ``lines`` layouts use it as the ts.
    """

    def __init__(self) -> None:
        self._parts: list[bytes] = []
        self._size = 0
        self._need = 1
        self.returned = 0

    def feed(self, data: bytes) -> Batch:
        """The records that ``data`` completes, in order."""
        if not data:
            return Batch((), [])
        self._parts.append(bytes(data))
        self._size += len(data)
        if self._size < self._need:
            return Batch((), [])
        buf = self._parts[0] if len(self._parts) == 1 else b"".join(self._parts)
        stamps, payloads, pos, self._need = self._decode(buf)
        rest = buf[pos:]
        self._parts = [rest] if rest else []
        self._size = len(rest)
        self.returned += len(payloads)
        return Batch(stamps, payloads)

    def close(self) -> Batch:
        """The input ended: the last records, or :class:`DecodeError` if one is cut short."""
        if self._size:
            raise DecodeError()
        return Batch((), [])

    @property
    def pending(self) -> int:
        """Bytes held for a record not yet complete."""
        return self._size

    def _decode(self, buf: bytes) -> tuple[Sequence[int], list[bytes], int, int]:
        """``(stamps, payloads, bytes used, bytes the rest needs before trying again)``."""
        raise NotImplementedError


class GilesDecoder(RecordDecoder):
    """``u32be L | u64be ts | L payload bytes``; the ts is the record's own."""

    def _decode(self, buf: bytes) -> tuple[Sequence[int], list[bytes], int, int]:
        stamps: list[int] = []
        payloads: list[bytes] = []
        pos, end = 0, len(buf)
        unpack = GILES_HEADER.unpack_from
        while end - pos >= 12:
            length, ts = unpack(buf, pos)
            stop = pos + 12 + length
            if stop > end:
                return stamps, payloads, pos, 12 + length
            stamps.append(ts)
            payloads.append(buf[pos + 12 : stop])
            pos = stop
        return stamps, payloads, pos, 12


class FramedDecoder(RecordDecoder):
    """``u32be L | L payload bytes``; the ts is the 0-based record index."""

    def _decode(self, buf: bytes) -> tuple[Sequence[int], list[bytes], int, int]:
        payloads: list[bytes] = []
        append = payloads.append
        pos, end = 0, len(buf)
        unpack = HEADER.unpack_from
        need = 4
        while end - pos >= 4:
            stop = pos + 4 + unpack(buf, pos)[0]
            if stop > end:
                need = stop - pos
                break
            append(buf[pos + 4 : stop])
            pos = stop
        return range(self.returned, self.returned + len(payloads)), payloads, pos, need


class LinesDecoder(RecordDecoder):
    """One payload per line; ``Listening on`` lines are skipped and do not count.

    The ts is the 0-based index among payload lines. A last line without a
    newline is a record too, returned by :meth:`close`.
    """

    def feed(self, data: bytes) -> Batch:
        if b"\n" in data:
            return super().feed(data)
        if data:
            # Cannot complete a line: keep it without joining.
            self._parts.append(bytes(data))
            self._size += len(data)
        return Batch((), [])

    def close(self) -> Batch:
        if not self._size:
            return Batch((), [])
        line = b"".join(self._parts)
        self._parts, self._size = [], 0
        if line.startswith(LISTENING):
            return Batch((), [])
        self.returned += 1
        return Batch((self.returned - 1,), [line])

    def _decode(self, buf: bytes) -> tuple[Sequence[int], list[bytes], int, int]:
        lines = buf.split(b"\n")
        rest = lines.pop()
        if LISTENING in buf:
            lines = [line for line in lines if not line.startswith(LISTENING)]
        stamps = range(self.returned, self.returned + len(lines))
        return stamps, lines, len(buf) - len(rest), 1


_DECODERS = {GILES: GilesDecoder, FRAMED: FramedDecoder, LINES: LinesDecoder}


def decoder_for(layout: str) -> RecordDecoder:
    """A fresh decoder for ``layout`` (one of :data:`LAYOUTS`)."""
    return _DECODERS[layout]()


def records(data: bytes, layout: str) -> Iterator[tuple[int, bytes]]:
    """Every ``(ts, payload)`` of a whole input, in order.

    The records before a cut-short one are yielded first, then
    :class:`DecodeError` is raised, so a caller meets problems in file order.
    """
    decoder = decoder_for(layout)
    yield from zip(*decoder.feed(data))
    yield from zip(*decoder.close())


# -- Writing: the fixtures, the tests and the benchmark produce each layout.


def encode_record(layout: str, ts: int, payload: bytes) -> bytes:
    """One record of ``layout``; ``ts`` is only written by ``giles``."""
    if layout == GILES:
        return GILES_HEADER.pack(len(payload), ts) + payload
    if layout == FRAMED:
        return HEADER.pack(len(payload)) + payload
    if layout == LINES:
        if b"\n" in payload:
            raise ValueError(f"a lines record cannot hold a newline: {payload!r}")
        return payload + b"\n"
    raise ValueError(f"unknown layout {layout!r}")


def encode_records(layout: str, items: Iterable[tuple[int, bytes]]) -> bytes:
    """A whole input of ``layout`` holding ``items`` (``(ts, payload)`` pairs)."""
    return b"".join(encode_record(layout, ts, payload) for ts, payload in items)
