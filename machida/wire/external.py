"""Sans-I/O codec for the external channel: ``u32be L | u16be id | payload``.

A worker's ``--external`` listener takes short control messages from outside
the cluster: print a line, rotate an event log, shut the cluster down. The
tools ``cluster_shutdown`` and ``external_sender`` encode them with
:func:`encode`; the runner's external channel decodes them with
:class:`ExternalFrameDecoder`. Ids follow Wallaroo's 2017 numbering
(``wally@14c8252b1:lib/wallaroo_labs/messages/external_messages.pony``);
``machida-flink``'s rescale (40) and savepoint (41) are our own. This
module imports no I/O: it turns text into bytes and bytes into ``(id, text)``.
"""

from __future__ import annotations

import struct

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder

PRINT = 11
ROTATE_LOG = 12
CLEAN_SHUTDOWN = 13
# Ours, for machida-flink (14-29 are kept for the runner's autoscale messages): rescale the
# job to the parallelism in the payload; stop it with a savepoint (the payload, if any, is
# the directory to write it under).
RESCALE = 40
SAVEPOINT = 41

# The names external_sender accepts for --type, mapped to their ids.
TYPE_IDS = {
    "print": PRINT,
    "rotate-log": ROTATE_LOG,
    "clean-shutdown": CLEAN_SHUTDOWN,
    "rescale": RESCALE,
    "savepoint": SAVEPOINT,
}

# L counts the id and the payload: 2 bytes is an empty message, and Wallaroo's
# channel refused anything above 1 MiB as a sign of a desynchronised stream.
MIN_LENGTH = 2
MAX_LENGTH = 1024 * 1024

_HEADER = struct.Struct(">IH")
_ID = struct.Struct(">H")


def encode(msg_id: int, text: str | bytes = "") -> bytes:
    """One external frame: ``u32be(2 + len(payload)) | u16be(msg_id) | payload``.

    ``text`` is sent as UTF-8. A payload that would exceed :data:`MAX_LENGTH`
    raises :class:`ValueError`, because no worker would accept it.
    """
    payload = text.encode("utf-8") if isinstance(text, str) else bytes(text)
    length = MIN_LENGTH + len(payload)
    if length > MAX_LENGTH:
        raise ValueError(f"external message of {length} bytes exceeds {MAX_LENGTH}")
    if not 0 <= msg_id <= 0xFFFF:
        raise ValueError(f"external message id {msg_id!r} does not fit in a u16")
    return _HEADER.pack(length, msg_id) + payload


class ExternalFrameDecoder:
    """Turns an external-channel byte stream into ``(id, text)`` pairs.

    ``feed(data)`` returns every message completed by ``data``, in order. A
    length below 2 or above 1 MiB means the stream cannot be trusted: the
    messages before it are still returned, :attr:`error` is set to a
    :class:`~machida.errors.FrameError` (the caller closes the connection),
    and later feeds return nothing. Payloads that are not valid UTF-8 are
    decoded with replacement characters, as the spec asks.
    """

    __slots__ = ("_frames",)

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_LENGTH, min_length=MIN_LENGTH)

    @property
    def error(self) -> FrameError | None:
        return self._frames.error

    @property
    def pending(self) -> int:
        """Bytes of an incomplete message; non-zero at close means a truncated frame."""
        return self._frames.pending

    def feed(self, data: bytes) -> list[tuple[int, str]]:
        unpack = _ID.unpack_from
        return [
            (unpack(frame)[0], frame[2:].decode("utf-8", "replace"))
            for frame in self._frames.feed(data)
        ]
