"""Links between workers open here: each side proves the cluster secret before any byte of
the peer's reaches a channel.

A listener for control or data connections wraps each accepted connection in
:class:`Guarded`, which runs the acceptor's side of :mod:`machida.wire.auth`
and then hands the transport to the channel; :class:`HandshakeLimit` bounds
how many handshakes a listener runs at once and how often it reports a
refusal. A worker dials its links with :func:`dial` (a boundary) or
:func:`dial_control` (its control link to the initializer).
"""

from __future__ import annotations

import asyncio
import errno
import os
import socket
import struct
import time
from typing import Callable, cast

from machida.aio import within
from machida.console import warn
from machida.runtime.channels import Channel, ControlChannel
from machida.wire.auth import AcceptorHandshake, DiallerHandshake
from machida.wire.control import ControlHandler

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


class HandshakeLimit:
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
    ``limit`` reports it. :attr:`settled` is the outcome for a dialler that
    waits for it: True, or False with the reason in :attr:`why`.
    """

    def __init__(
        self,
        channel: Channel,
        handshake: AcceptorHandshake | DiallerHandshake,
        limit: HandshakeLimit | None = None,
    ) -> None:
        self.channel = channel
        self.handshake = handshake
        self.limit = limit
        self.admitted = False
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.why = ""
        self.settled: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        if self.limit is not None:
            self.admitted = self.limit.admit()
            if not self.admitted:
                self._fail(f"more than {MAX_PENDING_HANDSHAKES} connections proving the secret")
                return
        if isinstance(self.handshake, AcceptorHandshake):
            self.transport.write(self.handshake.start())  # the acceptor speaks first
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(HANDSHAKE_TIMEOUT_S, self._fail,
                                      f"no handshake within {HANDSHAKE_TIMEOUT_S:g} s")  # fmt: skip

    def data_received(self, data: bytes) -> None:
        handshake, transport = self.handshake, self.transport
        assert transport is not None
        reply = handshake.feed(data)
        if reply:
            transport.write(reply)
        if handshake.error is not None:
            self._fail(str(handshake.error))
        elif handshake.done:
            self._settle(True)
            channel = self.channel
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
            if self.limit is not None:
                self.limit.refused(self.peer, why)
            if self.transport is not None:
                self.transport.close()

    def _settle(self, ok: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self.admitted and self.limit is not None:
            self.limit.release()
        self.settled.set_result(ok)


def guarded(secret: bytes, kind: bytes, channel: Callable[[], Channel]) -> Callable[[], Guarded]:
    """A factory for a worker's control or data listener: each connection proves the cluster
    secret before ``channel()`` gets it; a refusal is one line naming the peer."""

    limit = HandshakeLimit(kind.decode())
    return lambda: Guarded(channel(), AcceptorHandshake(secret, kind), limit)


async def dial_control(secret: bytes, role: ControlHandler, host: str, port: int) -> str:
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
