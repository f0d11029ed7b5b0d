"""The receiving end of the metrics stream, for tests and the Metrics UI.

:func:`serve_records` listens and calls ``on_record(record)`` for every record
that :class:`~machida.wire.records.RecordDecoder` takes out of a connection.
"""

from __future__ import annotations

import asyncio
from typing import Any, Callable

from machida.wire.records import RecordDecoder

OnRecord = Callable[[dict[str, Any]], None]


class _Receive(asyncio.Protocol):
    def __init__(self, server: RecordServer) -> None:
        self.server = server
        self.decoder = RecordDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        for record in self.decoder.feed(data):
            self.server.on_record(record)
        if self.decoder.error is not None and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)


class RecordServer:
    """A metrics receiver (made by :func:`serve_records`): ``on_record(record)`` per record.

    A connection whose bytes do not decode is closed; the others go on.
    :meth:`close` also closes accepted connections, so clients see the
    receiver go away (``Server.close`` alone leaves them open before 3.12).
    """

    def __init__(self, on_record: OnRecord) -> None:
        self.on_record = on_record
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[Any] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


async def serve_records(host: str, port: int, on_record: OnRecord) -> RecordServer:
    """Start a :class:`RecordServer` on ``host:port`` (0 for an ephemeral port)."""
    server = RecordServer(on_record)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(lambda: _Receive(server), host, port)
    return server
