"""A worker's side of the control plane: joining the cluster and leaving it.

A worker (:class:`Member`) binds its own listeners, then dials the
initializer's ``--control`` address until it answers (saying so every 10 s),
and says ``hello``. On ``topology`` it builds its share of the application,
writes its recovery files, dials the other workers' data addresses and, once
its sinks are connected, reports ``ready``. If the control connection drops it
dials again and rejoins. It answers the initializer's shutdown ``poll`` with
its counters, and ``finish`` or ``abort`` ends it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from typing import Any, Callable

from machida.cluster.node import Address, ControlLink, Node
from machida.cluster.role import DRAIN_DEADLINE_S, Role
from machida.console import error_line, say, warn
from machida.wire import control

# machida.md §3: a worker retries the initializer every 0.5 s and says so every 10 s.
CONTROL_RETRY_S = 0.5
WAITING_EVERY_S = 10.0

# dial(role, host, port): open a control connection whose messages go to ``role``; "" once
# it is up, else why the initializer's end refused it; OSError when nobody answers.
Dial = Callable[[Any, str, int], Awaitable[str]]


class Member(Role):
    """A worker's role: dial the initializer, build when told, answer polls."""

    def __init__(self, node: Node, initializer: Address, dial: Dial) -> None:
        super().__init__(node)
        self.initializer = initializer
        self._dial_once = dial
        self.conn: ControlLink | None = None
        self.members: dict[str, control.Worker] = {}
        self.built = False
        self.rejoin = False
        self.my_control: Address | None = None
        self.my_data: Address | None = None

    async def start(self) -> None:
        self.my_control, self.my_data = await self.node.listen(self)
        self.rejoin = self.node.recovered is not None
        self.spawn(self._dial())

    async def _dial(self) -> None:
        host, port = self.initializer
        last_line = -WAITING_EVERY_S
        while not self.shutting_down:
            try:
                refused = await self._dial_once(self, host, port)
            except OSError:
                refused = None
            if refused == "":
                return
            now = time.monotonic()
            if now - last_line >= WAITING_EVERY_S:
                self._still_waiting(refused)
                last_line = now
            await asyncio.sleep(CONTROL_RETRY_S)

    def _still_waiting(self, refused: str | None) -> None:
        host, port = self.initializer
        if refused is None:
            say(f"Waiting for initializer at {host}:{port}")
        else:
            warn(f"WARNING: the initializer at {host}:{port} refused this worker's link: "
                 f"{refused} (is it given the same cluster secret?); retrying")  # fmt: skip

    def on_open(self, conn: ControlLink) -> None:
        self.conn = conn
        assert self.my_control is not None and self.my_data is not None  # bound in start()
        conn.write(control.encode(control.Hello(
            self.node.name, self.my_control, self.my_data,
            tuple(self.node.fingerprint_parts()), self.rejoin,
        )))  # fmt: skip

    def on_close(self, conn: ControlLink) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if not self.shutting_down and self.node.running:
            warn("WARNING: control channel to the initializer lost; reconnecting")
            self.rejoin = True
            self.spawn(self._dial())

    def _on_refused(self, conn: ControlLink, msg: control.Refused) -> None:
        warn(error_line(f"the initializer refused this worker: {msg.reason}"))
        self.node.finish(1)

    def _on_members(self, conn: ControlLink, msg: control.Members) -> None:
        workers = msg.workers
        self.members = {w.name: w for w in workers}
        node = self.node
        if not self.built:
            self.built = True
            names = [w.name for w in workers]
            if not node.build(names):
                return
            node.save_topology(names, {w.name: (w.control, w.data) for w in workers})
        self.spawn(self._report_ready())
        for w in workers:
            if w.name != node.name:
                node.connect(w.name, w.data)

    async def _report_ready(self) -> None:
        await self.node.sinks_connected()
        if self.conn is not None:
            self.conn.write(control.encode(control.Ready(self.node.name)))
            self.node.recovery_complete()

    def _on_poll(self, conn: ControlLink, msg: control.Poll) -> None:
        self.shutting_down = True
        self.node.flush()
        conn.write(control.encode(control.Counts(msg.round, **self.node.counts())))

    def _on_finish(self, conn: ControlLink, msg: control.Finish) -> None:
        self.spawn(self._finish())

    async def _finish(self) -> None:
        self.node.quiet_links()
        code = await self.finish_shutdown(DRAIN_DEADLINE_S)
        if self.conn is not None:
            self.conn.write(control.encode(control.Finished(self.node.name, code)))
        self.node.finish(code)

    def _on_abort(self, conn: ControlLink, msg: control.Abort) -> None:
        self.abort_shutdown()

    def clean_shutdown(self, text: str) -> None:
        if self.conn is not None:
            self.conn.write(control.encode(control.ShutdownRequest(text)))
        else:
            warn("WARNING: clean shutdown requested while the initializer is unreachable")

    def rotate_log(self, target: str) -> None:
        if target == self.node.name:
            self.node.rotate_log()
        elif target in self.members and self.conn is not None:
            self.conn.write(control.encode(control.RotateLog(target)))
        else:
            warn(f"WARNING: RotateLog requested for unknown worker '{target}'")

    def _on_rotate_log(self, conn: ControlLink, msg: control.RotateLog) -> None:
        if msg.worker == self.node.name:
            self.node.rotate_log()

    HANDLERS = {
        control.Refused: _on_refused,
        control.Members: _on_members,
        control.Poll: _on_poll,
        control.Finish: _on_finish,
        control.Abort: _on_abort,
        control.RotateLog: _on_rotate_log,
    }
