"""Sans-I/O codec for a batch of messages going from one Flink operator to a state operator.

Messages cross operators (and TaskManagers) the way they crossed machida
workers: through the module's ``serialize``/``deserialize``, except plain u64
ints, which travel as raw 8-byte words when the runner's probe
(:func:`machida.app.loader.ints_round_trip`) shows the module's pair
gives them back unchanged, as between machida's workers. A
batch is the messages of one key from one source read, in order, so a record
costs one Java-Python crossing however many messages it carries.

Layout: ``b"Q" | u64le*`` for an all-int batch, ``b"S" | (u32be n | serialized)*``
otherwise. The int column is :func:`machida.wire.boundary.u64_column`'s, sent in the byte
order of the host both ends run on; between the runner's workers it crosses big-endian.
Serialising goes through the caller's ``hop_out``/``hop_in``
(:class:`machida.app.topology.LocalTopology`'s), so a failing ``serialize`` is
reported and counted by the project's error policy and only that message is
dropped.
"""

from __future__ import annotations

import struct
import sys
from array import array
from typing import Any, Callable

from machida.errors import FrameError
from machida.wire.boundary import u64_column

INTS = b"Q"[0]
SERIALIZED = b"S"[0]
U64_MAX = (1 << 64) - 1
_LENGTH = struct.Struct(">I")
_BIG_ENDIAN = sys.byteorder == "big"


def encode(messages: list, hop_out: Callable[[Any], bytes | None], raw_ints: bool) -> bytes:
    """One batch's bytes; messages ``hop_out`` refuses (returns None) are left out."""
    words = u64_column(messages) if raw_ints else None
    if words is not None:
        if _BIG_ENDIAN:
            words.byteswap()
        return b"Q" + words.tobytes()
    pack = _LENGTH.pack
    parts = [b"S"]
    for message in messages:
        data = hop_out(message)
        if data is not None:
            parts.append(pack(len(data)))
            parts.append(data)
    return b"".join(parts)


def decode(data: bytes, hop_in: Callable[[bytes], tuple[bool, Any]]) -> list:
    """The messages of a batch, in order; those ``hop_in`` cannot read are left out."""
    if not data:
        raise FrameError("an empty message batch")
    tag = data[0]
    if tag == INTS:
        if (len(data) - 1) % 8:
            raise FrameError(f"an int batch of {len(data) - 1} bytes is not a multiple of 8")
        words = array("Q")
        words.frombytes(memoryview(data)[1:])
        if _BIG_ENDIAN:
            words.byteswap()
        return words.tolist()
    if tag != SERIALIZED:
        raise FrameError(f"unknown message batch tag {tag!r}")
    out = []
    pos, end = 1, len(data)
    unpack = _LENGTH.unpack_from
    while pos < end:
        if end - pos < 4:
            raise FrameError("a message batch ends inside a length")
        (n,) = unpack(data, pos)
        stop = pos + 4 + n
        if stop > end:
            raise FrameError(f"a message batch ends inside a {n}-byte message")
        ok, message = hop_in(data[pos + 4 : stop])
        if ok:
            out.append(message)
        pos = stop
    return out
