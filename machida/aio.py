"""Waiting with a time limit without losing the waiter's own cancellation.

Before Python 3.12, :func:`asyncio.wait_for` returns the awaited result when
its caller is cancelled in the same loop turn as the awaited thing completes:
the cancellation is dropped (bpo-42130). A retry loop around it then runs on
after ``task.cancel()``, and whoever awaits that task, such as the ending of
a worker process, waits forever. :func:`within` and :func:`wait_event` behave
like ``wait_for`` except that a cancellation of the caller always wins.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(awaitable: Awaitable[T], timeout: float) -> T:
    """The result of ``awaitable``; :class:`asyncio.TimeoutError` after ``timeout`` s."""
    task = asyncio.ensure_future(awaitable)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        if not task.done():
            task.cancel()
        elif not task.cancelled():
            task.exception()  # looked at, so asyncio does not report it as never retrieved
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task})
        raise asyncio.TimeoutError
    return task.result()


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; whether it is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await within(event.wait(), timeout)
    return event.is_set()
