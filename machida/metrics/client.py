"""The metrics client: streams a worker's :class:`~machida.metrics.stats.Stats` to ``--metrics``.

About once a second a :class:`MetricsClient` turns the stats into a record
(cumulative since start; the receiver computes rates by differencing) and
writes it, framed by :mod:`machida.wire.records`, to the metrics receiver. It
stays out of the way: it connects quietly, drops records rather than buffer
past a small bound, and never raises into the worker.
"""

from __future__ import annotations

import asyncio
import socket

from machida.aio import wait_event, within
from machida.metrics.stats import Stats
from machida.wire.records import encode_record

# About sixteen typical records: a receiver that is that far behind is not reading, so newer
# records are dropped instead of queued. Keeps a stalled receiver from costing the worker memory.
MAX_BUFFERED = 64 * 1024
# Kernel send buffer for the metrics socket. Records are small and once a second; a larger
# kernel buffer would only hide a stalled receiver for longer while holding memory.
KERNEL_SEND_BUFFER = 64 * 1024
# machida.md §12: connection attempts repeat every second.
RETRY_S = 1.0
# A connect that has not finished by then is abandoned and retried (e.g. a black-holed host).
CONNECT_TIMEOUT_S = 1.0
# How long stop() waits for the streaming task to end.
STOP_S = 5.0


class _Discard(asyncio.Protocol):
    """The client's end: says when the connection is gone, ignores anything the receiver sends."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


class MetricsClient:
    """Streams ``stats`` records to ``host:port`` about every ``interval`` s, never in the way.

    :meth:`start` schedules one task on the running loop; the worker's code never
    awaits it. Connecting is retried every ``retry`` s without a word. While
    connected a record is written each interval unless the transport still
    holds more than :data:`MAX_BUFFERED` bytes, in which case the record is
    dropped and ``stats.records_dropped`` counts it. Any failure ends only the
    connection, which is then retried.
    """

    def __init__(
        self, host: str, port: int, stats: Stats, interval: float = 1.0, retry: float = RETRY_S
    ) -> None:
        self.host = host
        self.port = port
        self.stats = stats
        self.interval = interval
        self.retry = retry
        self.attempts = 0
        self._transport: asyncio.WriteTransport | None = None
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def buffered(self) -> int:
        """Bytes waiting in the transport (0 when not connected)."""
        return self._transport.get_write_buffer_size() if self._transport else 0

    def start(self) -> None:
        """Begin connecting and streaming in the background (call from the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop streaming and close the connection; records not yet written are dropped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_S)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    protocol = await self._connect()
                    if protocol is not None:
                        await self._stream(protocol)
                except Exception:
                    pass  # whatever went wrong ends only this connection; the worker never sees it
                finally:
                    self._drop_connection()
                await asyncio.sleep(self.retry)
        finally:
            self._drop_connection()

    async def _connect(self) -> _Discard | None:
        """One quiet attempt; the protocol of the new connection, or ``None``."""
        self.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            connecting = loop.create_connection(_Discard, self.host, self.port)
            transport, protocol = await within(connecting, CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return None
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
        self.stats.connections += 1
        return protocol

    async def _stream(self, protocol: _Discard) -> None:
        while not protocol.lost.is_set():
            self._send_one()
            await wait_event(protocol.lost, self.interval)

    def _send_one(self) -> None:
        transport, stats = self._transport, self.stats
        if transport is None or transport.is_closing():
            return
        record = stats.snapshot()  # even when dropped, so ``seq`` shows the gap
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            stats.records_dropped += 1
            return
        try:
            data = encode_record(record)
        except ValueError:
            stats.records_dropped += 1
            return
        transport.write(data)
        stats.records_sent += 1

    def _drop_connection(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()  # unsent records are worthless once late; don't linger to flush
