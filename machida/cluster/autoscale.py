"""Growing and shrinking a running cluster, coordinated by the initializer.

Workers join with ``machida --join`` (several together with ``--worker-count``)
and leave when a shrink asks them to (``cluster_shrinker``, ``external_sender
--type shrink``). Either way the initializer runs one change at a time
(:class:`Rescale`), stop-the-world, as Wallaroo did:

1. a grow first makes the joiners members, records them, tells everyone the new
   member list (the joiners build their share, owning nothing yet, and dial the
   others; the others dial them) and waits until the joiners are ready;
2. it holds its sources (the connections stay open; senders feel backpressure),
   waits ``--stop-pause``, and drains: polls every worker until nothing is in
   flight, so that no message for a key is on its way while the key moves;
3. it computes the next placement (:meth:`~machida.app.plan.Placement.rebalanced`)
   and records it as the change in progress: from here a restarted initializer
   completes this change;
4. it tells every worker the new placement (``topology`` with ``changing``):
   each routes by it at once and hands over every key it holds and no longer
   owns, its state as a record of the boundary to the new owner, which logs it
   (with resilience) before acknowledging; once every handover is acknowledged,
   the old owner logs the release and says ``migrated``;
5. when every worker has said ``migrated``, it records the new placement as
   the cluster's, tells the leaving workers to ``leave`` (they drain, remove their
   recovery files and exit 0) and everyone else to ``resume``, and reads its
   sources again.

A worker that restarts during a change gets the change again when it rejoins
(it builds with the new placement, restores what it holds from its event log
and hands over what it no longer owns), and so does every worker when the
initializer restarts: the change is driven to its end, never undone, so a key
always has exactly one owner and its state is never rebuilt while a copy of it
survives somewhere.
"""

from __future__ import annotations

import asyncio
from typing import Callable, NamedTuple, Protocol

from machida.aio import wait_event
from machida.app.plan import Placement
from machida.cluster.drain import Drain
from machida.cluster.membership import INITIALIZER, Member, Membership
from machida.cluster.node import Node
from machida.console import say
from machida.wire import control

# While a change waits for a worker (to be ready, to answer, to hand over), it says so this
# often: an operator should know why processing has not resumed.
WAITING_EVERY_S = 10.0


class ShrinkDecision(NamedTuple):
    """What a shrink request asks: a query, or the workers to remove; and the answer."""

    query: bool
    leaving: list[str]
    answer: str


def decide_shrink(text: str, members: list[str], busy: set[str]) -> ShrinkDecision:
    """Read a shrink request as Wallaroo's tools send it: ``?`` (which workers may leave),
    a count (the first eligible workers in join order), or names ``w2,w3``. A worker with
    sources (the initializer) cannot leave, nor one already leaving (``busy``); a list
    naming an unknown or ineligible worker shrinks nothing and says why."""
    eligible = [name for name in members if name != INITIALIZER and name not in busy]
    text = text.strip()
    if text == "?":
        return ShrinkDecision(True, [], "")
    if text.isdigit():
        count = int(text)
        chosen = eligible[:count]
        if not chosen:
            return ShrinkDecision(False, [], "Cannot shrink 0 workers!")
        return ShrinkDecision(False, chosen, f"Shrinking by {len(chosen)} workers!")
    names = [name.strip() for name in text.split(",") if name.strip()]
    why = _invalid(names, members, eligible)
    if why:
        return ShrinkDecision(False, [], f"Invalid shrink targets! {why}")
    return ShrinkDecision(False, names, f"Shrinking by {len(names)} workers!")


def _invalid(names: list[str], members: list[str], eligible: list[str]) -> str:
    if not names:
        return "No worker named."
    for name in names:
        if name == INITIALIZER:
            return "initializer cannot leave: the sources are on it."
        if name not in members:
            return f"There is no worker named '{name}'."
        if name not in eligible:
            return f"{name} is already leaving."
    if len(set(names)) != len(names):
        return "A worker is named twice."
    return ""


class Coordinator(Protocol):
    """What a change needs of the initializer's role."""

    node: Node
    membership: Membership
    drain: Drain
    placement: Placement | None
    change: tuple[Placement, tuple[str, ...]] | None  # target, leaving: recorded
    departed: tuple[str, ...]
    processing: bool
    stop_pause_s: float

    def save_record(self) -> None: ...

    def send_members(self) -> None: ...

    def tell(self, members: list[Member], message: control.ControlMessage | bytes) -> None: ...

    def change_placement(self, placement: Placement, leaving: tuple[str, ...],
                         done: Callable[[], None]) -> None: ...  # fmt: skip


class Rescale:
    """One grow or shrink of a running cluster, run by the initializer (module docstring)."""

    def __init__(self, init: Coordinator, joiners: list[str], leaving: list[str],
                 target: Placement | None = None) -> None:  # fmt: skip
        self.init = init
        self.joiners = joiners
        self.leaving = leaving
        self.target = target  # given when a restarted initializer completes a change
        self.migrated: set[str] = set()
        self.event = asyncio.Event()

    def wake(self) -> None:
        self.event.set()

    def worker_migrated(self, name: str, version: int) -> None:
        if self.target is not None and version == self.target.version:
            self.migrated.add(name)
            self.wake()

    async def run(self) -> None:
        init, node = self.init, self.init.node
        members = init.membership.members
        await self._wait("ready", lambda: [n for n in self.joiners if not members[n].ready])
        say("~~~Stopping message processing for leaving workers.~~~" if self.leaving else
            "~~~Stopping message processing for state migration.~~~")  # fmt: skip
        init.processing = False
        node.hold_sources(True)
        await asyncio.sleep(init.stop_pause_s)
        await init.drain.quiescent(shutdown=False)
        placement = init.placement
        assert placement is not None
        if self.target is None:
            staying = [name for name in init.membership.names if name not in self.leaving]
            self.target = placement.rebalanced(staying)
        target = self.target
        init.change = (target, tuple(self.leaving))
        init.save_record()  # from here a restarted initializer completes this change
        init.send_members()
        joiners = [name for name in target.workers if name not in placement.workers]
        for name in joiners:
            say(f"Migrating partitions to {name}")
        done = lambda: self.worker_migrated(INITIALIZER, target.version)  # noqa: E731
        init.change_placement(target, tuple(self.leaving), done)
        await self._wait("migrated", lambda: [n for n in init.membership.names
                                              if n not in self.migrated])  # fmt: skip
        if joiners:
            say("--All new workers have acked migration batch complete")
        self._done(target)

    def _done(self, target: Placement) -> None:
        init, node = self.init, self.init.node
        left = self.leaving
        init.placement, init.change, init.departed = target, None, tuple(left)
        leavers = [init.membership.members[name] for name in left]
        init.membership.remove(left)
        init.save_record()
        init.tell(leavers, control.Leave(target.version))
        init.tell(init.membership.others(), control.Resume(target.version))
        for name in left:
            node.forget(name)
        node.resume_placement()
        say("~~~Resuming message processing.~~~")
        init.processing = True
        node.hold_sources(False)

    async def _wait(self, what: str, missing: Callable[[], list[str]]) -> None:
        """Until ``missing()`` is empty, saying every WAITING_EVERY_S who it waits for."""
        loop = asyncio.get_running_loop()
        next_line = loop.time() + WAITING_EVERY_S
        while missing():
            self.event.clear()
            await wait_event(self.event, max(0.01, next_line - loop.time()))
            if loop.time() >= next_line and missing():
                say(f"Waiting for {', '.join(missing())} to be {what}")
                next_line = loop.time() + WAITING_EVERY_S
