"""Sans-I/O codec of the metrics stream (``--metrics``): one stats record per frame.

A record is ``u32be length | JSON object``, ASCII-escaped (see ``docs/metrics.md``).
:func:`encode_record` is what a worker's metrics client writes;
:class:`RecordDecoder` is what a receiver (tests, ``metrics_ui``) feeds bytes to.
"""

from __future__ import annotations

import json
from typing import Any

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder, encode_frame

FORMAT = "machida-metrics/1"
# A record is a few KiB even for large applications; anything near 1 MiB is a broken peer.
MAX_RECORD = 1024 * 1024


def encode_record(record: dict[str, Any]) -> bytes:
    """``u32be length | JSON``; ASCII-escaped, so valid UTF-8 even for odd worker names."""
    payload = json.dumps(record, separators=(",", ":")).encode("ascii")
    if len(payload) > MAX_RECORD:
        raise ValueError(f"metrics record of {len(payload)} bytes exceeds {MAX_RECORD}")
    return encode_frame(payload)


class RecordDecoder:
    """Splits a metrics stream into records (dicts), all the complete ones of a read at once.

    A length above :data:`MAX_RECORD`, a payload that is not UTF-8 JSON, or JSON
    that is not an object sets :attr:`error` (a :class:`FrameError`); the
    records before it are still returned, and later feeds return nothing.
    """

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_RECORD)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self.error is not None:
            return []
        records: list[dict[str, Any]] = []
        for payload in self._frames.feed(data):
            try:
                record = json.loads(payload.decode("utf-8"))
            except (ValueError, RecursionError) as err:
                self.error = FrameError(f"metrics record is not JSON: {err}", len(payload))
                return records
            if not isinstance(record, dict):
                kind = type(record).__name__
                self.error = FrameError(f"metrics record is a JSON {kind}, expected an object")
                return records
            records.append(record)
        self.error = self._frames.error
        return records
