"""A worker's listening sockets: sources, control, data and the external channel.

A worker restarted from recovery files binds the control and data addresses
it recorded (``Restarting a listener ...``), so the others find it where it
was. A listener that cannot be bound ends the process with one line naming
the address and the reason (:class:`BindError`).
"""

from __future__ import annotations

import asyncio
import socket
from typing import Callable

from machida.aio import Address, listen
from machida.console import os_reason, say
from machida.errors import BindError


class Listeners:
    """The servers of one worker, and the addresses they are bound to."""

    def __init__(self) -> None:
        self.sources: list[asyncio.base_events.Server] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.bound: dict[str, Address] = {}

    async def bind(self, kind: str, address: Address, factory: Callable,
                   recorded: Address | None = None) -> Address:  # fmt: skip
        """Listen on ``address`` (``recorded`` instead, when recovering); the bound address."""
        if recorded is not None:
            address = recorded
            say("Restarting a listener ...")
        server = await listen(factory, address, kind)
        self.servers.append(server)
        self.bound[kind] = (address[0], _port(server))
        return self.bound[kind]

    async def bind_source(self, name: str, address: Address, factory: Callable) -> None:
        try:
            server = await asyncio.get_running_loop().create_server(factory, *address)
        except (OSError, OverflowError) as err:
            raise BindError(f"{name} source is unable to listen on "
                            f"{address[0]}:{address[1]}: {os_reason(err)}") from err  # fmt: skip
        self.sources.append(server)
        say(f"{name} source listening on {address[0]}:{_port(server)}")

    def keep(self, server: asyncio.base_events.Server) -> None:
        """A server bound elsewhere (the external channel's), closed with the others."""
        self.servers.append(server)

    def stop_sources(self) -> None:
        for server in self.sources:
            server.close()

    def close(self) -> None:
        for server in (*self.sources, *self.servers):
            server.close()


def local_address_towards(host: str, port: int) -> str:
    """The local address this machine uses to reach ``host:port`` (no packet is sent): where a
    worker's own listeners go by default, so that they are reachable from the initializer's
    network only, never bound to every interface."""
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect(address)
            return probe.getsockname()[0]
    except OSError as err:
        raise BindError(
            f"cannot tell which local address reaches the initializer at {host}:{port} "
            f"({os_reason(err)}); give --my-control and --my-data"
        ) from err


def _port(server: asyncio.base_events.Server) -> int:
    return server.sockets[0].getsockname()[1]
