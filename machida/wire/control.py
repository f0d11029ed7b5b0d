"""Sans-I/O codec for the control channel between our own workers.

The control channel carries the few messages that organise a cluster: a
worker's ``hello`` (name, listener addresses, the lines of its topology fingerprint), the
initializer's ``refused`` or ``topology`` (the member list in join order),
``ready``, and the clean-shutdown conversation (``shutdown_request``,
``poll``/``counts``, ``finish``, ``abort``). They are rare, so each is a small
JSON object in a ``u32be length | payload`` frame; the format is this
project's own (machida.md leaves it open).

Message types and their fields:

| type | from → to | fields |
|---|---|---|
| ``hello`` | worker → initializer | ``name``, ``control``, ``data``, ``plan``, ``rejoin`` |
| ``refused`` | initializer → worker | ``reason`` |
| ``topology`` | initializer → worker | ``workers``: [{name, control, data}, …], join order |
| ``ready`` | worker → initializer | ``name`` |
| ``shutdown_request`` | worker → initializer | ``reason`` |
| ``poll`` / ``counts`` | initializer ↔ worker | ``round``; ``sent``, ``applied``, ``backlog`` |
| ``finish`` / ``finished`` | initializer ↔ worker | —; ``name``, ``code`` |
| ``abort`` | initializer → worker | ``reason`` |
| ``rotate_log`` | any → owner | ``worker`` |
"""

from __future__ import annotations

import json
from typing import Any

from machida.errors import FrameError
from machida.wire.framing import FrameDecoder, encode_frame

# Control messages are small; anything near this size means a confused peer.
MAX_CONTROL_FRAME = 1024 * 1024


def encode(kind: str, **fields: Any) -> bytes:
    """One control message as a frame."""
    return encode_frame(json.dumps({"type": kind, **fields}).encode("utf-8"))


class ControlDecoder:
    """Turns control-channel bytes into message dicts (each has a ``type``).

    A frame that is too long, not JSON, or not an object with a string ``type``
    sets :attr:`error`; the messages before it are still returned, and later
    feeds return nothing.
    """

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_CONTROL_FRAME, min_length=2)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[dict]:
        if self.error is not None:
            return []
        messages = []
        for frame in self._frames.feed(data):
            try:
                message = json.loads(frame)
            except (ValueError, RecursionError) as err:  # RecursionError: nested too deep
                self.error = FrameError(f"control message is not JSON: {err}")
                return messages
            if not isinstance(message, dict) or not isinstance(message.get("type"), str):
                self.error = FrameError(f"control message has no type: {message!r:.80}")
                return messages
            messages.append(message)
        if self._frames.error is not None:
            self.error = self._frames.error
        return messages
