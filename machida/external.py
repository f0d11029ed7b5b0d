"""The external channel (``--external``), served alike by the runner and machida-flink.

Operators and Wallaroo's tools (``cluster_shutdown``, ``external_sender``) open a
connection and send ``u32be L | u16be id | payload`` frames
(:mod:`machida.wire.external`). :func:`dispatch` is the one place that decides
what a message means: a Print is echoed, a CleanShutdown is acknowledged
(``cluster_shutdown`` waits for the echo) and handed to the engine, and every
other request goes to the method of the engine's :class:`ExternalCommands` that
:data:`REQUESTS` names, given the payload and a ``reply`` to answer with on the
same connection, now or later (a shrink is decided by the initializer). An
engine that lacks the method says the message is not handled, as Wallaroo did.
:class:`ExternalChannel` only moves bytes between a connection and
:func:`dispatch`; :func:`serve_external` binds it.
"""

from __future__ import annotations

import asyncio
from typing import Callable, Protocol, cast

from machida.aio import Address, listen
from machida.console import say, warn
from machida.wire import external
from machida.wire.external import CLEAN_SHUTDOWN, PRINT, ExternalFrameDecoder, encode

NOT_HANDLED = "Incoming External Message type not handled by external channel."

# Message id -> the ExternalCommands method that handles it: ``method(text, reply)``, where
# text is the payload and ``reply(frame)`` answers on the same connection. An engine
# implements those it supports.
REQUESTS = {
    external.ROTATE_LOG: "rotate_log",
    external.SHRINK: "shrink",
    external.PARTITION_QUERY: "partition_query",
    external.PARTITION_COUNT_QUERY: "partition_count_query",
    external.CLUSTER_STATUS_QUERY: "cluster_status_query",
    external.RESCALE: "rescale",  # machida-flink's own
    external.SAVEPOINT: "savepoint",
}
Reply = Callable[[bytes], None]


class ExternalCommands(Protocol):
    """What an engine does with the external channel's requests (it may have more of
    :data:`REQUESTS`' methods)."""

    def clean_shutdown(self, reason: str) -> None:
        """Drain and stop (the request is already acknowledged)."""

    def rotate_log(self, worker: str, reply: Reply) -> None:
        """Rotate the event log of ``worker``."""


def dispatch(commands: ExternalCommands, msg_id: int, text: str,
             reply: Callable[[bytes], None]) -> None:  # fmt: skip
    """One external message: its console line, what the engine does, and the answer."""
    if msg_id == PRINT:
        say(f"$$$ ExternalPrint: {text} $$$")
    elif msg_id == CLEAN_SHUTDOWN:
        say(f"External Clean Shutdown received: {text}" if text else
            "External Clean Shutdown received.")  # fmt: skip
        reply(encode(CLEAN_SHUTDOWN))  # cluster_shutdown waits for it
        commands.clean_shutdown(text)
    else:
        handler = getattr(commands, REQUESTS.get(msg_id, ""), None)
        if handler is None:
            say(NOT_HANDLED)
            return
        handler(text, reply)


class ExternalChannel(asyncio.Protocol):
    """One client of the external channel: frames in, :func:`dispatch`, answers out."""

    def __init__(self, commands: ExternalCommands) -> None:
        self.commands = commands
        self.decoder = ExternalFrameDecoder()
        self.transport: asyncio.Transport  # from connection_made on
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"

    def data_received(self, data: bytes) -> None:
        for msg_id, text in self.decoder.feed(data):
            dispatch(self.commands, msg_id, text, self._write)
        if self.decoder.error is not None:
            warn(f"ERROR: external connection from {self.peer}: {self.decoder.error}; "
                 f"connection closed")  # fmt: skip
            self.transport.close()

    def _write(self, data: bytes) -> None:
        if not self.transport.is_closing():
            self.transport.write(data)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.decoder.pending and self.decoder.error is None:
            warn(f"WARNING: external connection from {self.peer} closed in the middle of a "
                 f"frame; {self.decoder.pending} byte(s) discarded")  # fmt: skip


async def serve_external(commands: ExternalCommands, name: str,
                         address: Address) -> asyncio.base_events.Server:  # fmt: skip
    """Listen on ``address`` for the external channel (BindError if it cannot), and say so."""
    server = await listen(lambda: ExternalChannel(commands), address, "external")
    host, port = server.sockets[0].getsockname()[:2]
    say(f"{name} external: listening on {host}:{port}")
    return server
