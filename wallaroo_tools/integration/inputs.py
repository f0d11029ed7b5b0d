"""What ``integration_test``'s senders send: every input becomes a list of framed records.

A sender names its records (a range of integers, files of framed records,
files of lines, or a comma-separated list), the 0-based index of the source
they go to, in the order the application declares its pipelines, and the
``struct`` format of the length header (``>I`` by default). Inputs are read
and framed here, before any worker starts, so a missing file or a record cut
short is reported at once with the file's name. Nothing here opens a socket.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

DEFAULT_HEADER = ">I"
# The 2017 range defaults: an empty start is 0, an empty stop 1000.
DEFAULT_START = 0
DEFAULT_STOP = 1000
# A length header is an unsigned integer of 1, 2, 4 or 8 bytes with an optional byte order.
_HEADER_FORMAT = re.compile(r"[@=<>!]?[BHILQ]")
_U64 = struct.Struct(">Q")


class InputError(Exception):
    """A sender's input cannot be read or framed; the message names it."""


@dataclass(frozen=True)
class SenderSpec:
    """A sender as the command line gave it: checked, but its files not yet read."""

    flag: str
    what: str  # the range, the comma-separated paths, or the comma-separated items
    source: int
    header: struct.Struct

    def __repr__(self) -> str:
        return f"{self.flag} {self.what!r} {self.source} {self.header.format!r}"


@dataclass(frozen=True)
class Sender:
    """One sender: its flag (for messages), the source it feeds, and the records to send."""

    flag: str
    source: int
    records: tuple  # of bytes, each a whole record: header | payload


def header_struct(fmt: str, flag: str) -> struct.Struct:
    """The length header of ``fmt`` (``>I``, ``>H``, ``<Q``, ...), or :class:`InputError`."""
    if not _HEADER_FORMAT.fullmatch(fmt):
        raise InputError(
            f"{flag}: header format {fmt!r} is not an unsigned integer format such as '>I'"
        )
    return struct.Struct(fmt)


def _framed(header: struct.Struct, payload: bytes, flag: str) -> bytes:
    try:
        return header.pack(len(payload)) + payload
    except struct.error:
        raise InputError(
            f"{flag}: a record of {len(payload)} bytes does not fit header format {header.format!r}"
        ) from None


def parse_range(text: str) -> tuple[int, int]:
    """``(a,b]`` → the values sent, ``start + 1 .. stop``, as ``(start, stop)``.

    ``(a`` starts at a, ``[a`` at a - 1; ``b]`` stops at b, ``b)`` at b - 1; an
    empty end takes the 2017 default (0, 1000). So ``(0,1000]`` and ``[1,1000]``
    both send 1..1000.
    """
    parts = [part.strip() for part in text.split(",")]
    if len(parts) != 2 or parts[0][:1] not in ("(", "[") or parts[1][-1:] not in (")", "]"):
        raise InputError(f"range {text!r} is not in the form '(start,stop]' or '[start,stop)'")
    left, start_text = parts[0][0], parts[0][1:]
    stop_text, right = parts[1][:-1], parts[1][-1]
    try:
        start = int(start_text) if start_text.strip() else DEFAULT_START
        stop = int(stop_text) if stop_text.strip() else DEFAULT_STOP
    except ValueError:
        raise InputError(f"range {text!r} has an end that is not an integer") from None
    start -= left == "["
    stop -= right == ")"
    if start < -1 or stop >= 1 << 64:
        raise InputError(f"range {text!r} goes outside the u64 values 0..2**64-1")
    return start, stop


def sequence_records(text: str, header: struct.Struct, flag: str) -> list[bytes]:
    """``header(8) | u64be(v)`` for each v of the range (``sender -y -g 12 -u`` bytes)."""
    start, stop = parse_range(text)
    head = _framed(header, bytes(8), flag)[: header.size]
    pack = _U64.pack
    return [head + pack(v) for v in range(start + 1, stop + 1)]


def csv_records(text: str, header: struct.Struct, flag: str) -> list[bytes]:
    """Each comma-separated item of ``text`` (UTF-8), framed."""
    return [_framed(header, item.encode("utf-8", "surrogateescape"), flag)
            for item in text.split(",")]  # fmt: skip


def _read(path: str, flag: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError as err:
        raise InputError(f"{flag}: cannot read {path!r}: {err.strerror or err}") from None


def newline_records(paths: str, header: struct.Struct, flag: str) -> list[bytes]:
    """Every non-empty line of each comma-separated file, without its ``\\n``, framed."""
    out = []
    for path in paths.split(","):
        for line in _read(path, flag).split(b"\n"):
            if line:
                out.append(_framed(header, line, flag))
    return out


def framed_records(paths: str, header: struct.Struct, flag: str) -> list[bytes]:
    """The ``header | payload`` records of each comma-separated file, as they are."""
    out = []
    size, unpack = header.size, header.unpack_from
    for path in paths.split(","):
        data = _read(path, flag)
        pos = 0
        while pos < len(data):
            if len(data) - pos < size:
                raise InputError(
                    f"{flag}: {path!r} ends inside a length header at byte {pos} "
                    f"(record {len(out) + 1})"
                )
            stop = pos + size + unpack(data, pos)[0]
            if stop > len(data):
                raise InputError(
                    f"{flag}: {path!r} ends inside record {len(out) + 1}: it starts at byte "
                    f"{pos} and needs {stop - pos} bytes, the file has {len(data) - pos} left"
                )
            out.append(data[pos:stop])
            pos = stop
    return out


KINDS = {
    "--sequence-sender": sequence_records,
    "--framed-file-sender": framed_records,
    "--newline-file-sender": newline_records,
    "--csv-sender": csv_records,
}


def parse_sender(flag: str, values: list[str]) -> SenderSpec:
    """A sender's 1 to 3 values, ``WHAT [SOURCE [HEADER_FORMAT]]``, checked (no file is read)."""
    if not 1 <= len(values) <= 3:
        raise InputError(
            f"{flag} takes 1 to 3 values (what to send, then optionally the source index and "
            f"the header format), got {len(values)}"
        )
    source = 0
    if len(values) > 1:
        if not (values[1].isascii() and values[1].isdigit()):
            raise InputError(f"{flag}: source index {values[1]!r} is not a number from 0 up")
        source = int(values[1])
    header = header_struct(values[2] if len(values) > 2 else DEFAULT_HEADER, flag)
    if flag == "--sequence-sender":
        parse_range(values[0])
    return SenderSpec(flag, values[0], source, header)


def load_sender(spec: SenderSpec) -> Sender:
    """Read and frame the sender's records (:class:`InputError` names a file that fails)."""
    return Sender(
        spec.flag, spec.source, tuple(KINDS[spec.flag](spec.what, spec.header, spec.flag))
    )


def batches(records: tuple, size: int) -> list[bytes]:
    """The records joined ``size`` at a time: one socket write each."""
    return [b"".join(records[i : i + size]) for i in range(0, len(records), size)]
