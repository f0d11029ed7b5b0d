"""Timed waits that never lose the waiter's cancellation, and tasks never lost (machida.aio)."""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket

import pytest

from machida import aio
from machida.aio import background, close_loop, wait_event, within
from machida.metrics import MetricsClient, Stats


async def _cancel_as_it_completes(waiting) -> asyncio.Task:
    """Start ``waiting(event)``, then set the event and cancel the waiter in one loop turn."""
    event = asyncio.Event()
    task = asyncio.get_running_loop().create_task(waiting(event))
    await asyncio.sleep(0)  # the task is now suspended in its wait
    event.set()
    task.cancel()
    await asyncio.wait({task})
    return task


@pytest.mark.parametrize(
    "waiting",
    [lambda ev: within(ev.wait(), 10), lambda ev: wait_event(ev, 10)],
    ids=["within", "wait_event"],
)
def test_cancellation_in_the_turn_the_wait_completes_is_kept(waiting):
    task = asyncio.run(_cancel_as_it_completes(waiting))
    assert task.cancelled()


def test_within_gives_the_result_the_exception_or_a_timeout():
    async def main():
        async def value():
            return 7

        async def fails():
            raise ValueError("inner")

        got = await within(value(), 1)
        with pytest.raises(ValueError, match="inner"):
            await within(fails(), 1)
        slow = asyncio.ensure_future(asyncio.sleep(10))
        with pytest.raises(asyncio.TimeoutError):
            await within(slow, 0.01)
        return got, slow

    got, slow = asyncio.run(main())
    assert got == 7
    assert slow.cancelled()  # nothing is left running after a timeout


def test_wait_event_says_whether_the_event_was_set():
    async def main():
        event = asyncio.Event()
        before = await wait_event(event, 0.01)
        asyncio.get_running_loop().call_soon(event.set)
        return before, await wait_event(event, 10)

    assert asyncio.run(main()) == (False, True)


def test_metrics_client_stops_whenever_it_is_stopped():
    """Stopped at random points of a fast reconnect loop, the client always ends.

    With asyncio.wait_for on Python 3.11 about a third of these clients kept
    running: the cancel landed in the turn a refused connect completed, and the
    loop retried.
    """
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once released

    async def main():
        rng = random.Random(42)
        hung = 0
        for _ in range(150):
            client = MetricsClient("127.0.0.1", port, Stats("w1"), retry=0.0005)
            client.start()
            await asyncio.sleep(rng.random() * 0.003)
            await client.stop()
            hung += len(asyncio.all_tasks()) > 1  # more than this test's own task
        return hung

    loop = asyncio.new_event_loop()
    try:
        hung = loop.run_until_complete(main())
    finally:
        close_loop(loop, grace_s=1.0)  # asyncio.run would wait forever for a runaway client
    assert hung == 0


def test_close_loop_names_and_leaves_a_task_that_ignores_cancellation(capsys):
    ended = []

    async def stubborn():
        while True:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(1)

    async def polite():
        try:
            await asyncio.sleep(10)
        finally:
            ended.append("polite")

    async def start():
        loop = asyncio.get_running_loop()
        tasks = [loop.create_task(stubborn()), loop.create_task(polite())]
        await asyncio.sleep(0)
        return tasks

    loop = asyncio.new_event_loop()
    tasks = loop.run_until_complete(start())
    close_loop(loop, grace_s=0.05)
    assert loop.is_closed()
    assert ended == ["polite"]
    assert [task.done() for task in tasks] == [False, True]
    err = capsys.readouterr().err
    assert "WARNING: exiting although 1 task(s) did not stop:" in err
    assert "stubborn" in err


def test_a_background_task_that_raises_is_printed_and_ends_the_process(capsys):
    ended = []

    async def broken() -> None:
        await asyncio.sleep(0)
        raise RuntimeError("a fault of the runner")

    async def scenario() -> None:
        task = background(broken(), lambda: ended.append(1))
        await asyncio.wait({task})
        await asyncio.sleep(0)  # the done callback's turn

    asyncio.run(scenario())
    err = capsys.readouterr().err
    assert ended == [1]
    assert "ERROR: test_a_background_task_that_raises" in err and "broken failed:" in err
    assert "RuntimeError: a fault of the runner" in err and "Traceback" in err


def test_a_background_task_is_held_until_it_ends_then_let_go():
    async def scenario() -> tuple[bool, bool]:
        gate = asyncio.Event()
        task = background(gate.wait(), lambda: None)
        await asyncio.sleep(0)
        held = task in aio._BACKGROUND
        gate.set()
        await asyncio.wait({task})
        await asyncio.sleep(0)
        return held, task in aio._BACKGROUND

    assert asyncio.run(scenario()) == (True, False)
