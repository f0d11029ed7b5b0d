"""The initializer's clean-shutdown coordinator.

On CleanShutdown the initializer stops reading its sources at once and closes
them, whatever their clients do (what was read is processed and delivered).
It then polls every worker's counters until
:class:`~machida.cluster.quiescence.Quiescence` says nothing is in flight,
tells every worker to ``finish`` (flush its sinks, remove its recovery files,
exit 0), waits for their ``finished`` and finishes itself. If that has not
happened within :data:`~machida.cluster.role.DRAIN_DEADLINE_S`, everyone is
told to ``abort``: each reports what is left and exits 1.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Callable

from machida.aio import wait_event
from machida.cluster.drain import REPLY_WAIT_S, Drain
from machida.cluster.membership import INITIALIZER, Membership
from machida.cluster.node import Node
from machida.cluster.role import DRAIN_DEADLINE_S
from machida.wire import control


class ShutdownCoordinator:
    """Drains the sources, polls until quiescent, and ends every worker."""

    def __init__(self, node: Node, membership: Membership, drain: Drain) -> None:
        self.node = node
        self.membership = membership
        self.drain = drain
        self.done: set[str] = set()

    def wake(self) -> None:
        """Something a waiting step may be waiting for happened (a reply, a lost member)."""
        self.drain.wake()

    def finished(self, name: str) -> None:
        self.done.add(name)
        self.wake()

    async def run(self, finish_self: Callable[[float], Awaitable[int]]) -> int | None:
        """The whole shutdown; this process's exit status, or None when it must abort."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_DEADLINE_S
        self.node.stop_sources()
        if not await self.drain.quiescent(deadline):
            self._tell_others(control.Abort("drain deadline passed"))
            return None
        self.node.quiet_links()
        self._tell_others(control.Finish())
        await self._wait_finished(deadline)
        return await finish_self(max(0.1, deadline - loop.time()))

    def _tell_others(self, message: control.ControlMessage) -> None:
        frame = control.encode(message)
        for member in self.membership.others():
            member.conn.write(frame)

    async def _wait_finished(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        names = set(self.membership.names) - {INITIALIZER}
        while not names <= self.done and self.membership.others() and loop.time() < deadline:
            self.drain.event.clear()
            await wait_event(self.drain.event, REPLY_WAIT_S)
