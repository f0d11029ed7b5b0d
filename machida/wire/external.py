"""Sans-I/O codec for the external channel: ``u32be L | u16be id | payload``.

A worker's ``--external`` listener takes short control messages from outside
the cluster: print a line, rotate an event log, shut the cluster down, shrink
it, or ask where the keys are. The tools ``cluster_shutdown``,
``cluster_shrinker`` and ``external_sender`` encode them with
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
# Autoscale. Wallaroo 0.4.0 gave shrink the next id, 14; its later queries (renumbered in
# 0.5.0) are numbered on from there, each answered with the next id.
SHRINK = 14  # payload: "?" (which workers may leave), a count, or "w2,w3"
SHRINK_QUERY_RESPONSE = 15  # JSON {"node_names": [...], "node_count": n}
SHRINK_ERROR_RESPONSE = 16  # text: what the shrink does, or why it does nothing
PARTITION_QUERY = 17
PARTITION_QUERY_RESPONSE = 18  # JSON {"state_partitions": {state: {worker: [keys]}}, ...}
PARTITION_COUNT_QUERY = 19
PARTITION_COUNT_QUERY_RESPONSE = 20  # JSON {"state_partitions": {state: {worker: n}}, ...}
CLUSTER_STATUS_QUERY = 21
CLUSTER_STATUS_QUERY_RESPONSE = 22  # JSON {"processing_messages": b, "worker_names": [...], ...}
# Ours, for machida-flink (ids below 30 follow Wallaroo's numbering): rescale the job to
# the parallelism in the payload; stop it with a savepoint (the payload, if any, is the
# directory to write it under).
RESCALE = 40
SAVEPOINT = 41

# The names external_sender accepts for --type, mapped to their ids.
TYPE_IDS = {
    "print": PRINT,
    "rotate-log": ROTATE_LOG,
    "clean-shutdown": CLEAN_SHUTDOWN,
    "shrink": SHRINK,
    "partition-query": PARTITION_QUERY,
    "partition-count-query": PARTITION_COUNT_QUERY,
    "cluster-status-query": CLUSTER_STATUS_QUERY,
    "rescale": RESCALE,
    "savepoint": SAVEPOINT,
}
# The requests that are answered on the same connection, and the id of each answer.
ANSWERS = {
    SHRINK: (SHRINK_QUERY_RESPONSE, SHRINK_ERROR_RESPONSE),
    PARTITION_QUERY: (PARTITION_QUERY_RESPONSE,),
    PARTITION_COUNT_QUERY: (PARTITION_COUNT_QUERY_RESPONSE,),
    CLUSTER_STATUS_QUERY: (CLUSTER_STATUS_QUERY_RESPONSE,),
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
