"""The sending side of the boundaries: one dialled connection to each other worker.

:class:`OutLink` keeps the connection to one peer up: it dials the peer's data
address until it answers and proves the cluster secret (again after a drop,
or at a new address once the peer rejoined elsewhere), and on every
(re)connection writes what the data plane gives it first, the hello and then
the whole unacknowledged backlog.
What comes back is acknowledgements, handed to the data plane. :class:`Links`
is the set of them, keyed by peer name; the data plane writes its batches
through :meth:`Links.write`.
"""

from __future__ import annotations

import asyncio

from machida.console import os_reason, warn
from machida.runtime.channels import Channel, dial
from machida.runtime.dataplane import DataPlane
from machida.wire.auth import DiallerHandshake

# machida.md §6.1: a lost link is retried every second, with no time limit.
LINK_RETRY_S = 1.0


class LinkChannel(Channel):
    """The connection of an :class:`OutLink`; acknowledgements come back on it."""

    def __init__(self, link: OutLink) -> None:
        super().__init__()
        self.link = link

    def opened(self) -> None:
        self.link.opened(self)

    def data_received(self, data: bytes) -> None:
        error = self.link.plane.link_read(self.link.peer, data)
        if error is not None:
            warn(f"ERROR: data link to {self.link.peer}: {error}; reconnecting")
            self.close()

    def lost(self) -> None:
        self.link.lost(self)


class OutLink:
    """The boundary from this worker to ``peer``: dialling, re-dialling, writing."""

    def __init__(self, plane: DataPlane, secret: bytes, peer: str, host: str, port: int) -> None:
        self.plane = plane
        self.secret = secret
        self.peer = peer
        self.host, self.port = host, port
        self._channel: LinkChannel | None = None
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
            if self._channel is not None:
                self._channel.close()

    async def _dial(self) -> None:
        warned = False
        while not self.closing:
            where = f"{self.peer} at {self.host}:{self.port}"
            try:
                handshake = DiallerHandshake(self.secret, b"data")
                refused = await dial(LinkChannel(self), handshake, self.host, self.port)
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

    def opened(self, channel: LinkChannel) -> None:
        self._channel = channel
        self.ever_connected = True
        for frame in self.plane.link_opened(self.peer):
            channel.write(frame)

    def lost(self, channel: LinkChannel) -> None:
        if channel is not self._channel:
            return
        self._channel = None
        if not self.closing:
            unacked = self.plane.outbound[self.peer].backlog.unacked
            warn(f"WARNING: data link to {self.peer} lost; "
                 f"{unacked} message(s) kept for re-sending")  # fmt: skip
            asyncio.get_running_loop().call_later(LINK_RETRY_S, self.start)

    def write(self, frame: bytes) -> None:
        """A batch from the data plane (kept in its backlog: if the link is down, it is
        re-sent on the next connection)."""
        if self._channel is not None:
            self._channel.write(frame)

    def close(self) -> None:
        self.closing = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
        if self._channel is not None:
            self._channel.close()


class Links:
    """This worker's links to the other workers, by peer name."""

    def __init__(self, plane: DataPlane, secret: bytes) -> None:
        self.plane = plane
        self.secret = secret
        self.links: dict[str, OutLink] = {}

    def connect(self, peer: str, host: str, port: int) -> None:
        """Dial ``peer`` at ``host:port`` (or at this new address, if already linked)."""
        link = self.links.get(peer)
        if link is None:
            link = self.links[peer] = OutLink(self.plane, self.secret, peer, host, port)
            link.start()
        else:
            link.retarget(host, port)

    def write(self, peer: str, frame: bytes) -> None:
        link = self.links.get(peer)
        if link is not None:
            link.write(frame)

    def quiet(self) -> None:
        """The cluster is stopping: links that drop now are neither reported nor redialled."""
        for link in self.links.values():
            link.closing = True

    def close(self) -> None:
        for link in self.links.values():
            link.close()
