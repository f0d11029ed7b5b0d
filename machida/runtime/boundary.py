"""The asyncio halves of the boundaries, the data channels between workers.

A worker dials one boundary to each other worker it forwards to
(:class:`BoundaryOut`, all of them in :class:`Boundaries`) and accepts one from
each worker that forwards to it (:class:`BoundaryIn`). Both only move bytes: a
read goes to the data plane in one call, whose pure halves
(:class:`~machida.wire.boundary.OutgoingBoundary` and
:class:`~machida.wire.boundary.IncomingBoundary`) keep the backlog, the
de-duplication and the acknowledgement policy.

A :class:`BoundaryOut` keeps its connection up: it dials the peer's data
address until it answers and proves the cluster secret (again after a drop,
or at a new address once the peer rejoined elsewhere), and on every
(re)connection writes what the data plane gives it first, the hello and then
the whole unacknowledged backlog. Console and log lines call a boundary's
connection a *data link*.
"""

from __future__ import annotations

import asyncio
from typing import Callable

from machida.console import os_reason, warn
from machida.runtime.channels import Channel, Inputs
from machida.runtime.dataplane import DataPlane
from machida.runtime.guard import dial
from machida.wire.auth import DiallerHandshake
from machida.wire.boundary import IncomingBoundary

# machida.md §6.1: a lost data link is retried every second, with no time limit.
LINK_RETRY_S = 1.0


class BoundaryIn(Channel):
    """A boundary another worker dialled to this one: batches in, acknowledgements out, as
    the :class:`~machida.wire.boundary.IncomingBoundary` says when."""

    def __init__(self, plane: DataPlane, inputs: Inputs, sinks_busy: Callable[[], bool]) -> None:
        super().__init__()
        self.plane, self.inputs, self.sinks_busy = plane, inputs, sinks_busy
        self.incoming = IncomingBoundary()
        self._timer: asyncio.TimerHandle | None = None

    def opened(self) -> None:
        self.inputs.add(self)

    def data_received(self, data: bytes) -> None:
        error = self.plane.boundary_read(self.incoming, data)
        self.acknowledge()
        if error is not None:
            warn(f"ERROR: data link from {self.peer}: {error}; connection closed")
            self.close()

    def acknowledge(self) -> None:
        if self._timer is not None or self.closed:
            return
        if self.plane.halted:
            return  # what this worker could not make durable is never acknowledged
        loop = asyncio.get_running_loop()
        wait = self.incoming.ack_wait(loop.time(), self.sinks_busy())
        if wait is None:
            return
        if wait > 0:
            self._timer = loop.call_later(wait, self._retry)
            return
        self.write(self.incoming.take_ack(loop.time()))

    def _retry(self) -> None:
        self._timer = None
        self.acknowledge()

    def lost(self) -> None:
        self.inputs.discard(self)


class _Connection(Channel):
    """The connection of a :class:`BoundaryOut`; acknowledgements come back on it."""

    def __init__(self, boundary: BoundaryOut) -> None:
        super().__init__()
        self.boundary = boundary

    def opened(self) -> None:
        self.boundary.opened(self)

    def data_received(self, data: bytes) -> None:
        self.boundary.acks_received(self, data)

    def lost(self) -> None:
        self.boundary.lost(self)


class BoundaryOut:
    """The boundary from this worker to ``peer``: dialling, re-dialling, writing."""

    def __init__(self, plane: DataPlane, secret: bytes, peer: str, host: str, port: int) -> None:
        self.plane = plane
        self.secret = secret
        self.peer = peer
        self.host, self.port = host, port
        self._connection: _Connection | None = None
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
            if self._connection is not None:
                self._connection.close()

    async def _dial(self) -> None:
        warned = False
        while not self.closing:
            where = f"{self.peer} at {self.host}:{self.port}"
            try:
                handshake = DiallerHandshake(self.secret, b"data")
                refused = await dial(_Connection(self), handshake, self.host, self.port)
                if not refused:
                    return
                if not warned:
                    warn(f"ERROR: data link to {where} refused: {refused} (do both workers "
                         f"share the cluster secret?); retrying every second")  # fmt: skip
                    warned = True
            except OSError as err:
                if self.ever_connected and not warned:
                    warn(f"WARNING: data link to {where} is down "
                         f"({os_reason(err)}); retrying every second")  # fmt: skip
                    warned = True
            await asyncio.sleep(LINK_RETRY_S)

    def opened(self, connection: _Connection) -> None:
        self._connection = connection
        self.ever_connected = True
        for frame in self.plane.boundary_opened(self.peer):
            connection.write(frame)

    def acks_received(self, connection: _Connection, data: bytes) -> None:
        error = self.plane.ack_read(self.peer, data)
        if error is not None:
            warn(f"ERROR: data link to {self.peer}: {error}; reconnecting")
            connection.close()

    def lost(self, connection: _Connection) -> None:
        if connection is not self._connection:
            return
        self._connection = None
        if not self.closing:
            warn(f"WARNING: data link to {self.peer} lost; "
                 f"{self.plane.unacked(self.peer)} message(s) kept for re-sending")  # fmt: skip
            asyncio.get_running_loop().call_later(LINK_RETRY_S, self.start)

    def write(self, frame: bytes) -> None:
        """A batch from the data plane (kept in its backlog: if the connection is down, it is
        re-sent on the next one)."""
        if self._connection is not None:
            self._connection.write(frame)

    def close(self) -> None:
        self.closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._connection is not None:
            self._connection.close()


class Boundaries:
    """This worker's boundaries to the other workers, by peer name."""

    def __init__(self, plane: DataPlane, secret: bytes) -> None:
        self.plane = plane
        self.secret = secret
        self.out: dict[str, BoundaryOut] = {}

    def connect(self, peer: str, host: str, port: int) -> None:
        """Dial ``peer`` at ``host:port`` (or at this new address, if already dialled)."""
        boundary = self.out.get(peer)
        if boundary is None:
            boundary = self.out[peer] = BoundaryOut(self.plane, self.secret, peer, host, port)
            boundary.start()
        else:
            boundary.retarget(host, port)

    def write(self, peer: str, frame: bytes) -> None:
        boundary = self.out.get(peer)
        if boundary is not None:
            boundary.write(frame)

    def forget(self, peer: str) -> None:
        """``peer`` has left the cluster: close the boundary to it for good."""
        boundary = self.out.pop(peer, None)
        if boundary is not None:
            boundary.close()

    def quiet(self) -> None:
        """The cluster is stopping: connections that drop now are neither reported nor
        redialled."""
        for boundary in self.out.values():
            boundary.closing = True

    def close(self) -> None:
        for boundary in self.out.values():
            boundary.close()
