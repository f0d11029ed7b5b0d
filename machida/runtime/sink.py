"""A worker's sink connections (:class:`SinkConnection`): encoder bytes out, verbatim, to ``--out``.

Every worker opens its own connection to each sink address, even one that
owns no key. Bytes produced in a batch are written with one ``write``. The
connection is retried every second until it is up (``Waiting for sink at
h:p`` every ten seconds) and again if it drops; meanwhile output waits in a
buffer that counts toward backpressure. When the buffered bytes (ours plus
the transport's) pass :data:`HIGH_WATER`, the sink tells the worker to pause
its inputs, and to resume under :data:`LOW_WATER`. If the connection drops while
the transport still holds bytes, the fewest last writes that cover what it held
at the latest write are sent again on the next connection (whole, so a receiver
may see some windows twice but never a torn frame or a gap).
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import Callable

from machida.app.plan import AppPlan
from machida.console import say

# machida.md §6.4: pause inputs above 1 MiB of unsent sink output, resume below 256 KiB.
HIGH_WATER = 1024 * 1024
LOW_WATER = 256 * 1024
RETRY_S = 1.0
WAITING_LINE_EVERY_S = 10.0


class _SinkProtocol(asyncio.Protocol):
    def __init__(self, sink: SinkConnection) -> None:
        self.sink = sink

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.WriteTransport)
        transport.set_write_buffer_limits(high=HIGH_WATER, low=LOW_WATER)

    def data_received(self, data: bytes) -> None:
        pass  # a sink receiver has nothing to say; ignore whatever it sends

    def pause_writing(self) -> None:
        self.sink._set_blocked(True)

    def resume_writing(self) -> None:
        self.sink._set_blocked(False)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink._lost(self)


class SinkConnection:
    """One sink connection of one worker, reconnecting as needed."""

    def __init__(
        self,
        host: str,
        port: int,
        on_blocked: Callable[[bool], None],
        log: Callable[[str], None],
    ) -> None:
        self.host = host
        self.port = port
        self.address = f"{host}:{port}"
        self._on_blocked = on_blocked
        self._log = log
        self._transport: asyncio.WriteTransport | None = None
        self._protocol: _SinkProtocol | None = None
        self._queue: list[bytes] = []
        self._queued_bytes = 0
        # the last writes, covering what the transport held at the latest write
        self._held: deque[bytes] = deque()
        self._held_bytes = 0
        self._blocked = False
        self._closing = False
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        loop = asyncio.get_running_loop()
        last_line = -WAITING_LINE_EVERY_S
        while not self._closing:
            try:
                transport, protocol = await loop.create_connection(
                    lambda: _SinkProtocol(self), self.host, self.port
                )
            except OSError:
                now = time.monotonic()
                if now - last_line >= WAITING_LINE_EVERY_S:
                    self._log(f"Waiting for sink at {self.address}")
                    last_line = now
                await asyncio.sleep(RETRY_S)
                continue
            self._transport, self._protocol = transport, protocol
            if self._queue:
                queued = b"".join(self._queue)
                self._queue, self._queued_bytes = [], 0
                self._send(transport, queued)
                # From here the transport reports; asyncio pauses it above HIGH_WATER.
                self._set_blocked(transport.get_write_buffer_size() > HIGH_WATER)
            self.connected.set()
            return

    def write(self, data: bytes) -> None:
        """Hand ``data`` to the connection, or queue it while the connection is down."""
        transport = self._transport
        if transport is not None:
            self._send(transport, data)
            return
        self._queue.append(data)
        self._queued_bytes += len(data)
        if self._queued_bytes > HIGH_WATER:
            self._set_blocked(True)

    def _send(self, transport: asyncio.WriteTransport, data: bytes) -> None:
        transport.write(data)
        inside = transport.get_write_buffer_size()
        if inside:
            self._hold(data, inside)
        elif self._held:
            self._held.clear()  # the kernel has every byte so far
            self._held_bytes = 0

    def _hold(self, data: bytes, inside: int) -> None:
        """Keep ``data``, and of the earlier writes only what the transport may still hold."""
        held = self._held
        held.append(data)
        self._held_bytes += len(data)
        while self._held_bytes - len(held[0]) >= inside:
            self._held_bytes -= len(held.popleft())

    @property
    def buffered(self) -> int:
        """Bytes not yet handed to the kernel."""
        inner = self._transport.get_write_buffer_size() if self._transport else 0
        return inner + self._queued_bytes

    def _set_blocked(self, blocked: bool) -> None:
        if blocked != self._blocked:
            self._blocked = blocked
            self._on_blocked(blocked)

    def _lost(self, protocol: _SinkProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._transport = self._protocol = None
        self.connected.clear()
        self._queue = [*self._held, *self._queue]
        self._queued_bytes = sum(len(data) for data in self._queue)
        self._held.clear()
        self._held_bytes = 0
        self._set_blocked(self._queued_bytes > HIGH_WATER)
        if not self._closing:
            self._log(f"WARNING: sink connection to {self.address} lost; reconnecting")
            self.start()

    async def drain(self, deadline: float) -> bool:
        """Wait until every byte is handed to the kernel, or the loop time ``deadline``."""
        loop = asyncio.get_running_loop()
        while self.buffered:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        """Close after flushing what the transport holds (asyncio flushes on close)."""
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._transport is not None:
            self._transport.close()


class Sinks:
    """A worker's sink connections, one per pipeline with a sink (``None`` for the others);
    each reports ``on_blocked(pipeline_name, blocked)``."""

    def __init__(self, plan: AppPlan, on_blocked: Callable[[str, bool], None]) -> None:
        self.plan = plan
        self._on_blocked = on_blocked
        self.sinks: list[SinkConnection | None] = []

    def start(self) -> None:
        for pipeline in self.plan.pipelines:
            sink = None
            if pipeline.sink is not None:
                blocked = functools.partial(self._on_blocked, pipeline.name)
                sink = SinkConnection(pipeline.sink.host, int(pipeline.sink.port), blocked, say)
                sink.start()
            self.sinks.append(sink)

    def write(self, p: int, data: bytes) -> None:
        sink = self.sinks[p]
        assert sink is not None, "only a pipeline with a sink emits output"
        sink.write(data)

    def _open(self) -> list[SinkConnection]:
        return [sink for sink in self.sinks if sink is not None]

    def busy(self) -> bool:
        """Whether any sink still holds bytes in user space."""
        return any(sink.buffered for sink in self._open())

    async def connected(self) -> None:
        for sink in self._open():
            await sink.connected.wait()

    async def drain(self, seconds: float) -> bool:
        """Wait until every sink has handed its bytes to the kernel; False after ``seconds``."""
        deadline = asyncio.get_running_loop().time() + seconds
        return all([await sink.drain(deadline) for sink in self._open()])

    def leftovers(self) -> list[str]:
        return [f"{sink.buffered} byte(s) unsent to sink {sink.address}"
                for sink in self._open() if sink.buffered]  # fmt: skip

    def close(self) -> None:
        for sink in self._open():
            sink.close()
