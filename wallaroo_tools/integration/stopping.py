"""When an ``integration_test`` run is over, once its senders are done.

Three conditions, as in the 2017 harness: ``--sink-expect N`` (every sink has
exactly N records; more is a failure, and so is having fewer when
``--sink-expect-timeout`` runs out), ``--delay S`` (S seconds), or, with
neither, until the workers' metrics show no more traffic. That last one reads
the ``--metrics`` stream of this runner (docs/metrics.md): the run is idle once
every worker has sent two stats records in a row, both after the senders
finished, with the same message counters. :class:`Idle` decides that from the
records alone; the waits here only move time.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from wallaroo_tools.integration.sinks import Sink

COUNTERS = ("messages_in", "messages_arrived", "messages_forwarded", "messages_out")


class StopError(Exception):
    """The stop condition failed; the message says how."""


def over(sinks: list[Sink], expect: list[int | None]) -> str | None:
    """Why the sinks are past their counts (None: no count) or broken, or None."""
    for sink, n in zip(sinks, expect):
        if sink.problems:
            return sink.problems[0]
        if n is not None and sink.count > n:
            return (
                f"sink {sink.index} has received too many messages. "
                f"Expected {n} but got {sink.count}."
            )
    return None


async def sink_expect(sinks: list[Sink], expect: list[int], timeout: float) -> None:
    """Until every sink holds exactly its count; :class:`StopError` past it or at ``timeout``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        for sink in sinks:
            sink.watch()  # before looking, so nothing that arrives later goes unnoticed
        why = over(sinks, expect)
        if why is not None:
            raise StopError(why)
        if all(sink.count == n for sink, n in zip(sinks, expect)):
            return
        left = deadline - loop.time()
        if left <= 0:
            counts = ", ".join(f"sink {s.index}: {s.count} of {n}" for s, n in zip(sinks, expect))
            raise StopError(f"timed out after {timeout:g} seconds waiting for the sinks ({counts})")
        waits = [asyncio.ensure_future(sink.changed()) for sink in sinks]
        try:
            await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()


class Idle:
    """Whether the workers' stats records show a cluster with nothing left to do.

    ``record(rec, now)`` takes each record with its arrival time; ``idle(since)``
    is true once ``workers`` workers have each sent two records, both arriving
    at or after ``since``, whose message counters are equal.
    """

    def __init__(self, workers: int) -> None:
        self.workers = workers
        self._last: dict[str, list[tuple[float, tuple]]] = {}
        self.newest = 0.0

    def record(self, rec: dict[str, Any], now: float) -> None:
        totals = rec.get("totals")
        if not isinstance(totals, dict) or not isinstance(rec.get("worker"), str):
            return
        counts = tuple(totals.get(name) for name in COUNTERS)
        kept = self._last.setdefault(rec["worker"], [])
        kept.append((now, counts))
        del kept[:-2]
        self.newest = max(self.newest, now)

    def idle(self, since: float) -> bool:
        if len(self._last) < self.workers:
            return False
        return all(
            len(kept) == 2 and kept[0][0] >= since and kept[0][1] == kept[1][1]
            for kept in self._last.values()
        )


async def metrics_idle(idle: Idle, since: float, news: asyncio.Event, timeout: float) -> bool:
    """Until ``idle`` says so (True), or no new record came for ``timeout`` seconds (False).

    ``news`` is set whenever a record arrives; times are the event loop's clock.
    """
    loop = asyncio.get_running_loop()
    while not idle.idle(since):
        quiet_for = loop.time() - max(idle.newest, since)
        if quiet_for >= timeout:
            return False
        news.clear()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(news.wait(), timeout - quiet_for)
    return True
