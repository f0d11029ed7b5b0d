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
import dataclasses
from collections.abc import Awaitable
from typing import Callable

from machida.aio import wait_event
from machida.cluster.membership import INITIALIZER, Membership
from machida.cluster.node import Node
from machida.cluster.quiescence import Quiescence
from machida.cluster.role import DRAIN_DEADLINE_S
from machida.wire import control

# How often the polling rounds repeat (asyncio has no event for "the counters stopped moving").
POLL_EVERY_S = 0.02
# How long one polling round waits for a member that does not answer.
REPLY_WAIT_S = 0.5


class ShutdownCoordinator:
    """Drains the sources, polls until quiescent, and ends every worker."""

    def __init__(self, node: Node, membership: Membership) -> None:
        self.node = node
        self.membership = membership
        self.replies: dict[str, dict[str, int]] = {}  # this round's counts, by member
        self.done: set[str] = set()
        self.poll_round = 0
        self._event = asyncio.Event()

    def wake(self) -> None:
        """Something a waiting step may be waiting for happened (a reply, a lost member)."""
        self._event.set()

    def counts(self, name: str, msg: control.Counts) -> None:
        if msg.round == self.poll_round:
            self.replies[name] = dataclasses.asdict(msg)
            self.wake()

    def finished(self, name: str) -> None:
        self.done.add(name)
        self.wake()

    async def run(self, finish_self: Callable[[float], Awaitable[int]]) -> int | None:
        """The whole shutdown; this process's exit status, or None when it must abort."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_DEADLINE_S
        self.node.stop_sources()
        if not await self._quiescent(deadline):
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

    async def _quiescent(self, deadline: float) -> bool:
        loop = asyncio.get_running_loop()
        quiescence = Quiescence()
        expected_replies = self.membership.expected - 1
        while loop.time() < deadline:
            self.node.flush()
            others = await self._poll(deadline)
            complete = len(self.replies) == len(others) == expected_replies
            if quiescence.round([self.node.counts(), *self.replies.values()], complete):
                return True
            await asyncio.sleep(POLL_EVERY_S)
        return False

    async def _poll(self, deadline: float) -> list:
        """One polling round: ask every connected member, wait for their answers."""
        loop = asyncio.get_running_loop()
        self.poll_round += 1
        self.replies = {}
        others = self.membership.others()
        message = control.encode(control.Poll(self.poll_round))
        for member in others:
            member.conn.write(message)
        while len(self.replies) < len(others) and loop.time() < deadline:
            self._event.clear()
            if not await wait_event(self._event, REPLY_WAIT_S):
                break
        return others

    async def _wait_finished(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        names = set(self.membership.names) - {INITIALIZER}
        while not names <= self.done and self.membership.others() and loop.time() < deadline:
            self._event.clear()
            await wait_event(self._event, REPLY_WAIT_S)
