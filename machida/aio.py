"""Waiting with a time limit without losing the waiter's own cancellation.

Before Python 3.12, :func:`asyncio.wait_for` returns the awaited result when
its caller is cancelled in the same loop turn as the awaited thing completes:
the cancellation is dropped (bpo-42130). A retry loop around it then runs on
after ``task.cancel()``, and whoever awaits that task, such as the ending of
a worker process, waits forever. :func:`within` and :func:`wait_event` behave
like ``wait_for`` except that a cancellation of the caller always wins.
:func:`background` runs a task that can be neither lost nor fail unseen,
:func:`close_loop` ends a loop even when one of its tasks will not stop, and
:func:`listen` binds a listener or raises the one line that says why not.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import traceback
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from machida.console import os_reason, warn
from machida.errors import BindError

T = TypeVar("T")
Address = tuple[str, int]
# At exit, tasks still running are cancelled and given this long to end.
END_TASKS_S = 5.0


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


# The loop holds its tasks weakly: these are held until they end.
_BACKGROUND: set[asyncio.Task] = set()


def background(coro: Coroutine[Any, Any, Any], failed: Callable[[], None]) -> asyncio.Task:
    """Run ``coro`` on its own; if it raises, print its traceback (a fault of the runner, not
    of a peer) and call ``failed()``, so that the process ends instead of waiting forever."""
    task = asyncio.get_running_loop().create_task(coro)
    _BACKGROUND.add(task)
    task.add_done_callback(functools.partial(_ended, failed))
    return task


def _ended(failed: Callable[[], None], task: asyncio.Task) -> None:
    _BACKGROUND.discard(task)
    err = None if task.cancelled() else task.exception()
    if err is None:
        return
    warn(f"ERROR: {_name(task)} failed:")
    traceback.print_exception(type(err), err, err.__traceback__)
    failed()


def _name(task: asyncio.Task) -> str:
    """The name of the coroutine a task runs (``Initializer._shutdown``)."""
    return getattr(task.get_coro(), "__qualname__", task.get_name())


async def wait_event(event: asyncio.Event, timeout: float) -> bool:
    """Wait up to ``timeout`` s for ``event``; whether it is set."""
    with contextlib.suppress(asyncio.TimeoutError):
        await within(event.wait(), timeout)
    return event.is_set()


def close_loop(loop: asyncio.AbstractEventLoop, grace_s: float = END_TASKS_S) -> None:
    """Cancel the loop's remaining tasks, wait up to ``grace_s`` for them, and close it.

    Unlike ``asyncio.run``, a task that ignores its cancellation cannot keep the
    process alive after the worker has finished: it is named on stderr and left.
    """
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=grace_s))
        if stuck:
            names = ", ".join(sorted(_name(task) for task in stuck))
            warn(f"WARNING: exiting although {len(stuck)} task(s) did not stop: {names}")
    loop.run_until_complete(loop.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    loop.close()


async def listen(factory: Callable[[], asyncio.BaseProtocol], address: Address,
                 what: str, **options: Any) -> asyncio.base_events.Server:  # fmt: skip
    """A server on ``address`` for ``what`` (``control``, ``external``, ...); a
    :class:`BindError` naming the address and the operating system's reason if it cannot."""
    host, port = address
    try:
        return await asyncio.get_running_loop().create_server(factory, host, port, **options)
    except (OSError, OverflowError, ValueError) as err:  # OverflowError: a port past 65535
        raise BindError(f"unable to listen on {host}:{port} for {what}: {os_reason(err)}") from err
