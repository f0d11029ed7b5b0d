"""asyncio plumbing: listeners, connections and the boundary links between workers.

Nothing here parses or decides: :class:`Conn` hands every read to its owner's
``on_data`` and reports the close to ``on_close``; :class:`OutLink` keeps one
boundary's connection up (dialling the peer, re-sending the backlog after a
reconnection) and feeds acknowledgements back to its :class:`Backlog`.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from machida.wire.boundary import Backlog, BoundaryDecoder, hello

# machida.md §6.1: a lost link is retried every second, with no time limit.
LINK_RETRY_S = 1.0


class Conn(asyncio.Protocol):
    """One accepted or dialled connection; bytes go to ``owner.on_data(conn, data)``.

    ``state`` is free for the owner (a codec, a source connection, ...).
    """

    def __init__(self, owner: Any, kind: str) -> None:
        self.owner = owner
        self.kind = kind
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.state: Any = None
        self.closed = False
        self.last_read = 0.0  # loop-independent monotonic time of the last read, for idling

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.owner.on_open(self)

    def data_received(self, data: bytes) -> None:
        self.owner.on_data(self, data)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.owner.on_close(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def pause(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.pause_reading()

    def resume(self) -> None:
        if self.transport is not None and not self.closed:
            self.transport.resume_reading()


async def listen(owner: Any, kind: str, host: str, port: int) -> asyncio.base_events.Server:
    """Listen on ``host:port``; each connection is a :class:`Conn` of ``owner``."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(lambda: Conn(owner, kind), host, port)


def bound_port(server: asyncio.base_events.Server) -> int:
    return server.sockets[0].getsockname()[1]


class OutLink:
    """The sending side of the boundary from this worker to ``peer``."""

    def __init__(
        self,
        peer: str,
        host: str,
        port: int,
        me: str,
        incarnation: int,
        on_ack: Callable[[], None],
        log: Callable[[str], None],
    ) -> None:
        self.peer = peer
        self.host, self.port = host, port
        self.me, self.incarnation = me, incarnation
        self.backlog = Backlog()
        self._on_ack = on_ack
        self._log = log
        self._conn: Conn | None = None
        self._task: asyncio.Task | None = None
        self.closing = False
        self.ever_connected = False

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._dial())

    def retarget(self, host: str, port: int) -> None:
        """The peer came back on another address; dial there from now on."""
        if (host, port) != (self.host, self.port):
            self.host, self.port = host, port
            if self._conn is not None:
                self._conn.close()

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        warned = False
        while not self.closing:
            try:
                await loop.create_connection(lambda: Conn(self, "out"), self.host, self.port)
                return
            except OSError as err:
                if self.ever_connected and not warned:
                    where = f"{self.peer} at {self.host}:{self.port}"
                    self._log(f"WARNING: data link to {where} is down "
                              f"({err.strerror or err}); retrying every second")  # fmt: skip
                    warned = True
                await asyncio.sleep(LINK_RETRY_S)

    def on_open(self, conn: Conn) -> None:
        self._conn = conn
        self._decoder = BoundaryDecoder()
        self.ever_connected = True
        conn.write(hello(self.me, self.incarnation))
        for frame in self.backlog.replay():
            conn.write(frame)

    def on_data(self, conn: Conn, data: bytes) -> None:
        events = self._decoder.feed(data)
        for event in events:
            if event[0] == "ack":
                self.backlog.ack(event[1])
        if events:
            self._on_ack()
        if self._decoder.error is not None:
            self._log(f"ERROR: data link to {self.peer}: {self._decoder.error}; reconnecting")
            conn.close()

    def on_close(self, conn: Conn) -> None:
        if conn is not self._conn:
            return
        self._conn = None
        if not self.closing:
            self._log(f"WARNING: data link to {self.peer} lost; "
                      f"{self.backlog.unacked} message(s) kept for re-sending")  # fmt: skip
            loop = asyncio.get_running_loop()
            loop.call_later(LINK_RETRY_S, self.start)

    def flush(self) -> None:
        """Number the queued records and send them as one batch (kept until acked)."""
        frame = self.backlog.take_batch()
        if frame is not None and self._conn is not None:
            self._conn.write(frame)

    def close(self) -> None:
        self.closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._conn is not None:
            self._conn.close()
