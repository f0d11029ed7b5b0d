"""One asyncio protocol per channel a worker reads: sources, boundaries, external, control.

asyncio only moves bytes here. Each ``data_received`` feeds the channel's codec
and makes one call: a source read goes to
:meth:`~machida.runtime.dataplane.DataPlane.source_read`, a boundary read to
:meth:`~machida.runtime.dataplane.DataPlane.boundary_read` (then the
acknowledgement), an external message to the worker's handler, a control
message to the cluster role. :class:`Inputs` holds the connections that
flow control pauses and resumes together. A link between two workers (control
or data) is first :class:`Guarded`: its channel gets the connection only once
the peer has proved the cluster secret (:mod:`machida.wire.auth`).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from typing import Any, Callable

from machida.aio import within
from machida.app.pipeline import SourceConnection
from machida.console import warn
from machida.runtime.dataplane import DataPlane, Inbound
from machida.runtime.flow import FlowControl
from machida.wire.auth import AcceptorHandshake, DiallerHandshake
from machida.wire.control import ControlDecoder
from machida.wire.external import ExternalFrameDecoder

# While a sink holds output in user space, an acknowledgement is retried this often
# (asyncio has no event for "the transport's buffer is empty", so this polls).
ACK_RETRY_S = 0.002
# A link is acknowledged at most this often. An acknowledgement only frees the upstream's
# backlog (whose pause mark, 16,384 records, is far), but each one wakes the upstream worker,
# whose data path then waits behind it: at 50,000 msgs/s, one per batch made a third of the
# initializer's wake-ups. Five milliseconds of records is little backlog at any rate.
ACK_EVERY_S = 0.005
# A peer that has not proved the cluster secret by then is closed: the exchange is three
# small messages, so even a loaded machine answers in well under a second.
HANDSHAKE_TIMEOUT_S = 10.0
# A dial that neither connects nor is refused by then gives up (and is retried): an address
# that drops packets would otherwise hold it for the kernel's SYN retries, about two minutes,
# even after the peer came back elsewhere. A live peer answers within milliseconds.
CONNECT_TIMEOUT_S = 5.0
# Connections of one listener still proving the secret beyond which new ones are closed at
# once: a cluster has a handful of peers, and each unproven connection holds a descriptor for
# up to HANDSHAKE_TIMEOUT_S, so a stranger opening many could starve the worker's own.
MAX_PENDING_HANDSHAKES = 64
# A listener reports at most this many refusals per REFUSAL_WINDOW_S (the rest are counted in
# the next line), so that a stranger cannot flood the log; a few are each worth a line.
REFUSAL_LINES = 10
REFUSAL_WINDOW_S = 10.0
# SO_LINGER on, for 0 s: a close resets the connection and leaves nothing behind.
_RESET = struct.pack("ii", 1, 0)
# A pause of the inputs that lasts this long is reported once (an operator should know).
PAUSE_REPORT_S = 1.0


class Channel(asyncio.Protocol):
    """A connection: its transport and peer; writes, pauses and closes that are safe after
    the connection is gone."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.opened()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.lost()

    def eof_received(self) -> bool:
        return False

    def opened(self) -> None:
        """The connection is up (override)."""

    def lost(self) -> None:
        """The connection is gone (override)."""

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


class Inputs:
    """The connections a worker reads from, paused and resumed as flow control says; a pause
    that lasts is reported."""

    def __init__(self, flow: FlowControl, worker: str = "") -> None:
        self.flow = flow
        self.worker = worker
        self.sources: set[SourceChannel] = set()
        self.links: set[BoundaryIn] = set()
        self._pause_timer: asyncio.TimerHandle | None = None

    def changed(self) -> None:
        """Flow control changed: apply it, and time a backpressure pause."""
        self.apply()
        paused = self.flow.paused
        if paused and self._pause_timer is None:
            loop = asyncio.get_running_loop()
            self._pause_timer = loop.call_later(PAUSE_REPORT_S, self._report_pause)
        elif not paused and self._pause_timer is not None:
            self._pause_timer.cancel()
            self._pause_timer = None

    def _report_pause(self) -> None:
        reasons = ", ".join(sorted(self.flow.reasons))
        warn(f"WARNING: {self.worker} has paused its inputs for over {PAUSE_REPORT_S:g} s "
             f"(backpressure: {reasons})")  # fmt: skip

    def add(self, channel: SourceChannel | BoundaryIn) -> None:
        group, reading = self._group(channel)
        group.add(channel)
        if not reading:
            channel.pause()

    def discard(self, channel: SourceChannel | BoundaryIn) -> None:
        self._group(channel)[0].discard(channel)

    def _group(self, channel: Any) -> tuple[set, bool]:
        if isinstance(channel, SourceChannel):
            return self.sources, self.flow.reading_sources
        return self.links, self.flow.reading_links

    def apply(self) -> None:
        """Pause or resume every connection as flow control now says."""
        for group, reading in ((self.sources, self.flow.reading_sources),
                               (self.links, self.flow.reading_links)):  # fmt: skip
            for channel in group:
                (channel.resume if reading else channel.pause)()

    def close_sources(self) -> None:
        for channel in self.sources:
            channel.close()

    def close(self) -> None:
        for channel in (*self.sources, *self.links):
            channel.close()


class SourceChannel(Channel):
    """A client of a source (``--in``): giles sender frames, carried through the data plane."""

    def __init__(self, plane: DataPlane, inputs: Inputs, p: int) -> None:
        super().__init__()
        self.plane, self.inputs, self.p = plane, inputs, p
        self.source: SourceConnection | None = None

    def opened(self) -> None:
        self.inputs.add(self)

    def data_received(self, data: bytes) -> None:
        if self.source is None:
            self.source = self.plane.open_source(self.p, self.peer)
        if not self.plane.source_read(self.source, data):
            self.close()

    def lost(self) -> None:
        self.inputs.discard(self)
        if self.source is not None:
            self.source.close()


class BoundaryIn(Channel):
    """A data link another worker dialled to this one: batches in, acknowledgements out.

    Acknowledgements go once the output of what was applied has left for the
    kernel, and at most every :data:`ACK_EVERY_S`; while a sink still holds
    bytes the acknowledgement waits, which is what holds the upstream back.
    """

    def __init__(self, plane: DataPlane, inputs: Inputs, sinks_busy: Callable[[], bool]) -> None:
        super().__init__()
        self.plane, self.inputs, self.sinks_busy = plane, inputs, sinks_busy
        self.inbound = Inbound()
        self._timer: asyncio.TimerHandle | None = None
        self._acked_at = float("-inf")  # loop time of the last acknowledgement

    def opened(self) -> None:
        self.inputs.add(self)

    def data_received(self, data: bytes) -> None:
        error = self.plane.boundary_read(self.inbound, data)
        self.acknowledge()
        if error is not None:
            warn(f"ERROR: data link from {self.peer}: {error}; connection closed")
            self.close()

    def acknowledge(self) -> None:
        if not self.inbound.owes_ack or self._timer is not None or self.closed:
            return
        if self.plane.halted:
            return  # what this worker could not make durable is never acknowledged
        loop = asyncio.get_running_loop()
        wait = ACK_RETRY_S if self.sinks_busy() else self._acked_at + ACK_EVERY_S - loop.time()
        if wait > 0:
            self._timer = loop.call_later(wait, self._retry)
            return
        self._acked_at = loop.time()
        self.write(self.inbound.take_ack())

    def _retry(self) -> None:
        self._timer = None
        self.acknowledge()

    def lost(self) -> None:
        self.inputs.discard(self)


class ExternalChannel(Channel):
    """A client of the external channel (``--external``): ``on_message(channel, msg_id, text)``
    (the handler may answer on the channel)."""

    def __init__(self, on_message: Callable[[Channel, int, str], None]) -> None:
        super().__init__()
        self.on_message = on_message
        self.decoder = ExternalFrameDecoder()

    def data_received(self, data: bytes) -> None:
        for msg_id, text in self.decoder.feed(data):
            self.on_message(self, msg_id, text)
        if self.decoder.error is not None:
            warn(f"ERROR: external connection from {self.peer}: {self.decoder.error}; "
                 f"connection closed")  # fmt: skip
            self.close()

    def lost(self) -> None:
        if self.decoder.pending:
            warn(f"WARNING: external connection from {self.peer} closed in the middle of a "
                 f"frame; {self.decoder.pending} byte(s) discarded")  # fmt: skip


class ControlChannel(Channel):
    """A control connection: each message goes to the cluster role; a corrupt one closes it."""

    def __init__(self, role: Any) -> None:
        super().__init__()
        self.role = role
        self.decoder = ControlDecoder()

    def opened(self) -> None:
        self.role.on_open(self)

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            self.role.on_message(self, message)
        if self.decoder.error is not None:
            warn(f"ERROR: control connection with {self.peer}: {self.decoder.error}")
            self.close()

    def lost(self) -> None:
        self.role.on_close(self)


class Ignored(Channel):
    """A connection on a listener that has nothing to say (a worker's own control address)."""

    def data_received(self, data: bytes) -> None:
        pass


class Door:
    """What a listener's handshakes share: how many are pending (at most
    :data:`MAX_PENDING_HANDSHAKES`) and the refusal lines (at most
    :data:`REFUSAL_LINES` per :data:`REFUSAL_WINDOW_S`)."""

    def __init__(self, kind: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.kind = kind
        self.pending = 0
        self._clock = clock
        self._window_start = -REFUSAL_WINDOW_S
        self._lines = 0
        self._unreported = 0

    def admit(self) -> bool:
        if self.pending >= MAX_PENDING_HANDSHAKES:
            return False
        self.pending += 1
        return True

    def release(self) -> None:
        self.pending -= 1

    def refused(self, peer: str, why: str) -> None:
        now = self._clock()
        if now - self._window_start >= REFUSAL_WINDOW_S:
            self._window_start, self._lines = now, 0
        if self._lines >= REFUSAL_LINES:
            self._unreported += 1
            return
        more = f" ({self._unreported} more refused since the last line)" if self._unreported else ""
        warn(f"WARNING: refused a {self.kind} connection from {peer}: {why}{more}")
        self._lines, self._unreported = self._lines + 1, 0


class Guarded(asyncio.Protocol):
    """Runs the cluster-secret handshake, then hands the connection to ``channel``.

    Until the peer has proved the secret nothing it sends reaches the channel:
    at most the handshake's few fixed-size bytes are read. On success the
    transport's protocol becomes the channel itself (no cost per read
    afterwards). On failure, or if the handshake takes longer than
    :data:`HANDSHAKE_TIMEOUT_S`, the connection is closed and an acceptor's
    ``door`` reports it. :attr:`settled` is the outcome for a dialler that
    waits for it: True, or False with the reason in :attr:`why`.
    """

    def __init__(
        self,
        channel: Channel,
        handshake: AcceptorHandshake | DiallerHandshake,
        door: Door | None = None,
    ) -> None:
        self.channel = channel
        self.handshake = handshake
        self.door = door
        self.admitted = False
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.why = ""
        self.settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if self.door is not None:
            self.admitted = self.door.admit()
            if not self.admitted:
                self._fail(f"more than {MAX_PENDING_HANDSHAKES} connections proving the secret")
                return
        if isinstance(self.handshake, AcceptorHandshake):
            transport.write(self.handshake.start())  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._fail,
                                      f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")  # fmt: skip

    def data_received(self, data: bytes) -> None:
        handshake = self.handshake
        reply = handshake.feed(data)
        if reply:
            self.transport.write(reply)
        if handshake.error is not None:
            self._fail(str(handshake.error))
        elif handshake.done:
            self._settle(True)
            transport, channel = self.transport, self.channel
            transport.set_protocol(channel)
            channel.connection_made(transport)
            if handshake.rest and not channel.closed:
                channel.data_received(handshake.rest)

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail("the connection closed during the handshake")

    def _fail(self, why: str) -> None:
        if not self.settled.done():
            self.why = why
            self._settle(False)
            if self.door is not None:
                self.door.refused(self.peer, why)
            self.transport.close()

    def _settle(self, ok: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.admitted:
            self.door.release()
        self.settled.set_result(ok)


def guarded(secret: bytes, kind: bytes, channel: Callable[[], Channel]) -> Callable[[], Guarded]:
    """A factory for a worker's control or data listener: each connection proves the cluster
    secret before ``channel()`` gets it; a refusal is one line naming the peer."""

    door = Door(kind.decode())
    return lambda: Guarded(channel(), AcceptorHandshake(secret, kind), door)


async def dial_control(secret: bytes, role: Any, host: str, port: int) -> str:
    """A member's control connection to the initializer ("" once up, else why not)."""
    return await dial(ControlChannel(role), DiallerHandshake(secret, b"control"), host, port)


async def dial(channel: Channel, handshake: DiallerHandshake, host: str, port: int) -> str:
    """Connect to ``host:port`` and prove the secret; "" once ``channel`` has the connection,
    else why not (OSError when nothing answers at all)."""
    loop = asyncio.get_running_loop()
    connecting = loop.create_connection(lambda: Guarded(channel, handshake), host, port)
    try:
        transport, guard = await within(connecting, CONNECT_TIMEOUT_S)
    except asyncio.TimeoutError:
        raise TimeoutError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT)) from None
    if transport.get_extra_info("sockname") == transport.get_extra_info("peername"):
        # Nothing listened, and the kernel gave this socket the very port it dialled (a TCP
        # self-connect, possible for ports in the ephemeral range): let the port go at once,
        # for the process that is about to listen there, as if the dial had been refused.
        sock = transport.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _RESET)  # no TIME_WAIT to hold it
        transport.abort()
        await asyncio.sleep(0)  # the abort closes the socket on the loop's next turn
        raise ConnectionRefusedError(errno.ECONNREFUSED, os.strerror(errno.ECONNREFUSED))
    return "" if await guard.settled else guard.why
