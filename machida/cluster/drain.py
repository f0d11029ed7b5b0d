"""Waiting, on the initializer, until the cluster has nothing in flight.

The initializer polls every member's counters (``sent``, ``applied``, the
unacknowledged ``backlog`` of its boundaries) in rounds until
:class:`~machida.cluster.quiescence.Quiescence` says nothing is in flight. A
clean shutdown drains this way once its sources are closed, and so does a grow
or shrink once the sources are held, before any key moves: a key's state may
only move while no message for it is on its way.
"""

from __future__ import annotations

import asyncio
import dataclasses

from machida.aio import wait_event
from machida.cluster.membership import Membership
from machida.cluster.node import Node
from machida.cluster.quiescence import Quiescence
from machida.wire import control

# How often the polling rounds repeat (asyncio has no event for "the counters stopped moving").
POLL_EVERY_S = 0.02
# How long one polling round waits for a member that does not answer.
REPLY_WAIT_S = 0.5


class Drain:
    """Polls the members until nothing is in flight; :meth:`wake` on anything it may wait for
    (a reply, a lost or returning member)."""

    def __init__(self, node: Node, membership: Membership) -> None:
        self.node = node
        self.membership = membership
        self.replies: dict[str, dict[str, int]] = {}  # this round's counts, by member
        self.poll_round = 0
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.event.set()

    def counts(self, name: str, msg: control.Counts) -> None:
        if msg.round == self.poll_round:
            self.replies[name] = dataclasses.asdict(msg)
            self.wake()

    async def quiescent(self, deadline: float | None = None, shutdown: bool = True) -> bool:
        """Poll until quiescent (True) or the loop time ``deadline`` (False); without a
        deadline, until quiescent."""
        loop = asyncio.get_running_loop()
        quiescence = Quiescence()
        while deadline is None or loop.time() < deadline:
            self.node.flush()
            others = await self._poll(deadline, shutdown)
            expected = len(self.membership.members) - 1
            complete = len(self.replies) == len(others) == expected
            if quiescence.round([self.node.counts(), *self.replies.values()], complete):
                return True
            await asyncio.sleep(POLL_EVERY_S)
        return False

    async def _poll(self, deadline: float | None, shutdown: bool) -> list:
        """One polling round: ask every connected member, wait for their answers."""
        loop = asyncio.get_running_loop()
        self.poll_round += 1
        self.replies = {}
        others = self.membership.others()
        message = control.encode(control.Poll(self.poll_round, shutdown))
        for member in others:
            member.conn.write(message)
        while len(self.replies) < len(others) and (deadline is None or loop.time() < deadline):
            self.event.clear()
            if not await wait_event(self.event, REPLY_WAIT_S):
                break
        return others
