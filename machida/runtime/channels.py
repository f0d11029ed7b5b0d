"""The asyncio protocols of the channels a worker reads besides its boundaries.

asyncio only moves bytes here. Each ``data_received`` feeds the channel's codec
and makes one call: a source read goes to
:meth:`~machida.runtime.dataplane.DataPlane.source_read`, a control message to
the cluster role. :class:`Channel` is what every connection of a worker shares
(the boundaries' too, :mod:`machida.runtime.boundary`); :class:`Inputs` holds
the connections that flow control pauses and resumes together. Links between
workers are opened through :mod:`machida.runtime.guard` first.
"""

from __future__ import annotations

import asyncio
from typing import cast

from machida.app.topology import SourceConnection
from machida.console import warn
from machida.runtime.dataplane import DataPlane
from machida.runtime.flow import FlowControl
from machida.wire.control import ControlDecoder, ControlHandler

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
        self.transport = cast(asyncio.Transport, transport)
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
        self.boundaries: set[Channel] = set()  # each a runtime.boundary.BoundaryIn
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

    def add(self, channel: Channel) -> None:
        group, reading = self._group(channel)
        group.add(channel)
        if not reading:
            channel.pause()

    def discard(self, channel: Channel) -> None:
        self._group(channel)[0].discard(channel)

    def _group(self, channel: Channel) -> tuple[set, bool]:
        if isinstance(channel, SourceChannel):
            return self.sources, self.flow.reading_sources
        return self.boundaries, self.flow.reading_links

    def apply(self) -> None:
        """Pause or resume every connection as flow control now says."""
        groups: tuple[tuple[set, bool], ...] = (
            (self.sources, self.flow.reading_sources),
            (self.boundaries, self.flow.reading_links),
        )
        for group, reading in groups:
            for channel in group:
                (channel.resume if reading else channel.pause)()

    def close_sources(self) -> None:
        for channel in self.sources:
            channel.close()

    def close(self) -> None:
        for channel in (*self.sources, *self.boundaries):
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


class ControlChannel(Channel):
    """A control connection: each message goes to the cluster role; one the codec refuses
    closes it."""

    def __init__(self, role: ControlHandler) -> None:
        super().__init__()
        self.role = role
        self.decoder = ControlDecoder()

    def opened(self) -> None:
        self.role.on_open(self)

    def data_received(self, data: bytes) -> None:
        for message in self.decoder.feed(data):
            self.role.on_message(self, message)
        if self.decoder.error is not None:
            warn(f"ERROR: control connection with {self.peer}: {self.decoder.error}; "
                 f"connection closed")  # fmt: skip
            self.close()

    def lost(self) -> None:
        self.role.on_close(self)


class Ignored(Channel):
    """A connection on a listener that has nothing to say (a worker's own control address)."""

    def data_received(self, data: bytes) -> None:
        pass
