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

With exactly-once output (:class:`ExactlyOnceSink`) the connection speaks the
protocol of :mod:`machida.wire.exactly_once`: the data plane keeps every output
until the receiver acknowledges it, and this shell only moves bytes: on each
(re)connection it writes the plane's hello, hands what the receiver says to
the plane, writes what the plane gives back (the output the receiver does not
hold), and from then on the plane's new output.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from typing import Callable, Protocol, TypeVar, Union

from machida.app.plan import AppPlan
from machida.console import say
from machida.errors import FrameError
from machida.runtime.flow import SINK_HIGH_WATER as HIGH_WATER
from machida.runtime.flow import SINK_LOW_WATER as LOW_WATER

RETRY_S = 1.0
WAITING_LINE_EVERY_S = 10.0
# A receiver that has not answered an exactly-once hello after this long is said to (it may
# have been started without --exactly-once).
HELLO_WAIT_S = 10.0


class ExactlyOnceHost(Protocol):
    """What an exactly-once sink connection needs of the data plane."""

    def sink_opened(self, p: int) -> bytes:
        """The hello for a new connection of pipeline ``p``'s sink."""

    def sink_read(self, p: int, data: bytes) -> tuple[list[bytes], FrameError | None]:
        """The receiver's bytes: what to send now, and the error if they broke."""

    def sink_ready(self, p: int) -> bool:
        """Whether the receiver has answered this connection's hello."""


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


class _Dialer(Protocol):
    host: str
    port: int
    address: str
    _closing: bool
    _log: Callable[[str], None]


_P = TypeVar("_P", bound=asyncio.Protocol)


async def _dial(sink: _Dialer, factory: Callable[[], _P]) -> tuple[asyncio.Transport, _P] | None:
    """Connect to ``sink``'s address, again every RETRY_S until it answers (saying so every
    WAITING_LINE_EVERY_S); None once the sink is closing."""
    loop = asyncio.get_running_loop()
    last_line = -WAITING_LINE_EVERY_S
    while not sink._closing:
        try:
            transport, protocol = await loop.create_connection(factory, sink.host, sink.port)
        except OSError:
            now = time.monotonic()
            if now - last_line >= WAITING_LINE_EVERY_S:
                sink._log(f"Waiting for sink at {sink.address}")
                last_line = now
            await asyncio.sleep(RETRY_S)
            continue
        assert isinstance(transport, asyncio.Transport)
        return transport, protocol
    return None


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
        dialed = await _dial(self, lambda: _SinkProtocol(self))
        if dialed is None:
            return
        transport, protocol = dialed
        self._transport, self._protocol = transport, protocol
        if self._queue:
            queued = b"".join(self._queue)
            self._queue, self._queued_bytes = [], 0
            self._send(transport, queued)
            # From here the transport reports; asyncio pauses it above HIGH_WATER.
            self._set_blocked(transport.get_write_buffer_size() > HIGH_WATER)
        self.connected.set()

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


class _ExactlyOnceProtocol(asyncio.Protocol):
    def __init__(self, sink: ExactlyOnceSink) -> None:
        self.sink = sink

    def data_received(self, data: bytes) -> None:
        self.sink._received(self, data)

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink._lost(self)


class ExactlyOnceSink:
    """One exactly-once sink connection of one worker (pipeline ``p``), reconnecting as
    needed; the data plane keeps the output and says what to send."""

    def __init__(self, host: str, port: int, p: int, plane: ExactlyOnceHost,
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.host, self.port, self.p = host, port, p
        self.address = f"{host}:{port}"
        self.plane = plane
        self._log = log
        self._transport: asyncio.Transport | None = None
        self._protocol: _ExactlyOnceProtocol | None = None
        self._hello_timer: asyncio.TimerHandle | None = None
        self._closing = False
        self._task: asyncio.Task | None = None
        self.connected = asyncio.Event()  # the receiver has answered the hello

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._connect_loop())

    async def _connect_loop(self) -> None:
        dialed = await _dial(self, lambda: _ExactlyOnceProtocol(self))
        if dialed is None:
            return
        transport, protocol = dialed
        self._transport, self._protocol = transport, protocol
        transport.write(self.plane.sink_opened(self.p))
        self._hello_timer = asyncio.get_running_loop().call_later(HELLO_WAIT_S, self._unanswered)

    def _unanswered(self) -> None:
        self._hello_timer = None
        self._log(f"WARNING: the sink at {self.address} has not answered the exactly-once "
                  f"hello in {HELLO_WAIT_S:g} s (is its receiver started with "
                  f"--exactly-once?); output waits")  # fmt: skip

    def _received(self, protocol: _ExactlyOnceProtocol, data: bytes) -> None:
        transport = self._transport
        if protocol is not self._protocol or transport is None:
            return
        frames, error = self.plane.sink_read(self.p, data)
        for frame in frames:
            transport.write(frame)
        if not self.connected.is_set() and self.plane.sink_ready(self.p):
            if self._hello_timer is not None:
                self._hello_timer.cancel()
                self._hello_timer = None
            self.connected.set()
        if error is not None:
            self._log(f"ERROR: sink connection to {self.address}: {error}; reconnecting")
            transport.abort()

    def write(self, data: bytes) -> None:
        """New output from the plane (kept there: if the connection is down, it is sent again
        on the next one)."""
        if self._transport is not None:
            self._transport.write(data)

    @property
    def buffered(self) -> int:
        """Bytes not yet handed to the kernel."""
        return self._transport.get_write_buffer_size() if self._transport else 0

    def _lost(self, protocol: _ExactlyOnceProtocol) -> None:
        if protocol is not self._protocol:
            return
        self._transport = self._protocol = None
        self.connected.clear()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
            self._hello_timer = None
        if not self._closing:
            self._log(f"WARNING: sink connection to {self.address} lost; reconnecting")
            asyncio.get_running_loop().call_later(RETRY_S, self.start)

    async def drain(self, deadline: float) -> bool:
        """Wait until every byte is handed to the kernel, or the loop time ``deadline``."""
        loop = asyncio.get_running_loop()
        while self.buffered:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def close(self) -> None:
        self._closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._hello_timer is not None:
            self._hello_timer.cancel()
        if self._transport is not None:
            self._transport.close()


AnySink = Union[SinkConnection, ExactlyOnceSink]


class Sinks:
    """A worker's sink connections, one per pipeline with a sink (``None`` for the others);
    each reports ``on_blocked(pipeline_name, blocked)``. With ``exactly_once`` (the data
    plane) they speak the exactly-once sink protocol, and flow control follows the plane's
    backlogs instead."""

    def __init__(self, plan: AppPlan, on_blocked: Callable[[str, bool], None],
                 exactly_once: ExactlyOnceHost | None = None) -> None:  # fmt: skip
        self.plan = plan
        self._on_blocked = on_blocked
        self.exactly_once = exactly_once
        self.sinks: list[AnySink | None] = []

    def start(self) -> None:
        for p, pipeline in enumerate(self.plan.pipelines):
            sink: AnySink | None = None
            if pipeline.sink is not None:
                host, port = pipeline.sink.host, int(pipeline.sink.port)
                if self.exactly_once is not None:
                    sink = ExactlyOnceSink(host, port, p, self.exactly_once, say)
                else:
                    blocked = functools.partial(self._on_blocked, pipeline.name)
                    sink = SinkConnection(host, port, blocked, say)
                sink.start()
            self.sinks.append(sink)

    def write(self, p: int, data: bytes) -> None:
        sink = self.sinks[p]
        assert sink is not None, "only a pipeline with a sink emits output"
        sink.write(data)

    def _open(self) -> list[AnySink]:
        return [sink for sink in self.sinks if sink is not None]

    def busy(self) -> bool:
        """Whether any sink still holds bytes in user space (exactly-once output is logged
        before it is written, so it never holds an acknowledgement back)."""
        if self.exactly_once is not None:
            return False
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
