"""machida-flink's external channel (``--external``): Wallaroo's messages and two of our own.

Print and CleanShutdown do what they do in machida (``cluster_shutdown`` gets
its frame echoed as soon as it is read); RotateLog has nothing to rotate here.
Ours: rescale (40, the payload is the new parallelism) and savepoint (41, the
payload an optional directory). What they ask is handed to the run as a
request (:class:`Requests`); the run does it in turn.
"""

from __future__ import annotations

import asyncio
from typing import Protocol

from machida.console import say, warn
from machida.errors import BindError
from machida.wire.external import (
    CLEAN_SHUTDOWN,
    PRINT,
    RESCALE,
    ROTATE_LOG,
    SAVEPOINT,
    ExternalFrameDecoder,
    encode,
)
from machida_flink.ingress import bind_reason
from machida_flink.options import FlinkConfig


class Requests(Protocol):
    """What the external channel asks of the run."""

    config: FlinkConfig

    def ask_shutdown(self) -> None: ...

    def ask_rescale(self, text: str) -> None: ...

    def ask_savepoint(self, text: str) -> None: ...


async def listen_external(run: Requests) -> asyncio.AbstractServer | None:
    """Listen on ``--external`` (if given); raises :class:`BindError` with the line to print."""
    if run.config.external is None:
        return None
    host, port = run.config.external
    try:
        server = await asyncio.get_running_loop().create_server(
            lambda: ExternalProtocol(run), host, port
        )
    except (OSError, OverflowError) as err:
        raise BindError(f"Error: unable to listen on {host}:{port} for the external "
                        f"channel: {bind_reason(err)}") from err  # fmt: skip
    real = server.sockets[0].getsockname()
    say(f"{run.config.name} external: listening on {real[0]}:{real[1]}")
    return server


class ExternalProtocol(asyncio.Protocol):
    def __init__(self, run: Requests) -> None:
        self.run = run
        self.decoder = ExternalFrameDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        for msg_id, text in self.decoder.feed(data):
            if msg_id == PRINT:
                say(f"$$$ ExternalPrint: {text} $$$")
            elif msg_id == CLEAN_SHUTDOWN:
                say("External Clean Shutdown received." if not text else
                    f"External Clean Shutdown received: {text}")  # fmt: skip
                self.transport.write(encode(CLEAN_SHUTDOWN))  # cluster_shutdown waits for it
                self.run.ask_shutdown()
            elif msg_id == RESCALE:
                self.run.ask_rescale(text)
            elif msg_id == SAVEPOINT:
                self.run.ask_savepoint(text)
            elif msg_id == ROTATE_LOG:
                warn("WARNING: RotateLog ignored: on Flink, state lives in checkpoints, not logs")
            else:
                say("Incoming External Message type not handled by external channel.")
        if self.decoder.error is not None:
            peer = self.transport.get_extra_info("peername")
            warn(f"ERROR: external channel {peer}: {self.decoder.error}; connection closed")
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.decoder.pending and self.decoder.error is None:
            warn(f"WARNING: external connection closed inside a frame; "
                 f"{self.decoder.pending} byte(s) discarded")  # fmt: skip
