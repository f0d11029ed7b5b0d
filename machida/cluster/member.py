"""A worker's side of the control plane: joining the cluster, changing with it, leaving it.

A worker (:class:`Member`) binds its own listeners, then dials the
initializer's ``--control`` address until it answers (saying so every 10 s),
and says ``hello``. On ``topology`` it builds its share of the application,
writes its recovery files, dials the other workers' data addresses and, once
its sinks are connected, reports ``ready``. If the control connection drops it
dials again and rejoins. It answers the initializer's ``poll`` with its
counters, and ``finish`` or ``abort`` ends it.

A worker started with ``--join`` dials that address, any running worker's
control address: the worker there answers with the initializer's address
(:class:`Contact`), where it joins. While the cluster changes (``topology``
with ``changing``) a member routes by the new placement, hands over what it no
longer owns and says ``migrated``; on ``resume`` it processes again, and a
worker told to ``leave`` drains, removes its recovery files and exits 0.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Awaitable
from typing import Any, Callable

from machida.app.plan import Placement
from machida.cluster.membership import INITIALIZER
from machida.cluster.node import Address, ControlLink, Node, Record
from machida.cluster.role import DRAIN_DEADLINE_S, Reply, Role
from machida.console import error_line, say, warn
from machida.wire import control, external

# machida.md §3: a worker retries the initializer every 0.5 s and says so every 10 s.
CONTROL_RETRY_S = 0.5
WAITING_EVERY_S = 10.0
JOIN_LINE = "***Worker {} attempting to join the cluster. Sent necessary information.***"

# dial(role, host, port): open a control connection whose messages go to ``role``; "" once
# it is up, else why the initializer's end refused it; OSError when nobody answers.
Dial = Callable[[Any, str, int], Awaitable[str]]


class Member(Role):
    """A worker's role: dial the initializer, build when told, change, answer polls."""

    def __init__(self, node: Node, initializer: Address, dial: Dial, keys: dict[str, tuple],
                 join: int = 0) -> None:  # fmt: skip
        super().__init__(node, keys)
        self.initializer = initializer  # the --join address at first, for a joiner
        self.join = join  # how many join with this worker (0: it forms the cluster)
        self._dial_once = dial
        self.conn: ControlLink | None = None
        self.members: dict[str, control.Worker] = {}
        self.leaving: tuple[str, ...] = ()
        self.handing_over: int | None = None  # the version whose handovers are not all acked
        self.built = False
        self.rejoin = False
        self.said_joined = False  # the joiner's success line is printed once
        self.redirected = asyncio.Event()
        self.my_control: Address | None = None
        self.my_data: Address | None = None
        self._requests = itertools.count(1)
        self._replies: dict[int, Reply] = {}  # shrink requests waiting for the initializer
        self._contact = Contact(self)

    def accepting(self) -> Contact:
        return self._contact

    async def start(self) -> None:
        self.my_control, self.my_data = await self.node.listen(self.accepting(), self)
        recovered = self.node.recovered
        self.rejoin = recovered is not None
        if recovered is not None and self.join:
            # a joined worker restarting: straight to the initializer it joined (the worker it
            # first contacted may have left the cluster since)
            for peer in recovered.peers:
                if peer.name == INITIALIZER:
                    self.initializer = peer.control
        self.spawn(self._dial())

    async def _dial(self) -> None:
        last_line = -WAITING_EVERY_S
        while not self.shutting_down:
            host, port = self.initializer
            self.redirected.clear()
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
        joining = 0 if self.built else self.join
        conn.write(control.encode(control.Hello(
            self.node.name, self.my_control, self.my_data,
            tuple(self.node.fingerprint_parts()), self.rejoin, joining,
        )))  # fmt: skip

    def on_close(self, conn: ControlLink) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if self.redirected.is_set():
            self.spawn(self._dial())  # on to the initializer
        elif not self.shutting_down and self.node.running:
            warn("WARNING: control channel to the initializer lost; reconnecting")
            self.rejoin = True
            self.spawn(self._dial())

    def _on_join_via(self, conn: ControlLink, msg: control.JoinVia) -> None:
        """The worker this one contacted to join: the initializer is there."""
        self.initializer = msg.initializer
        self.redirected.set()
        conn.close()

    def _on_refused(self, conn: ControlLink, msg: control.Refused) -> None:
        warn(error_line(f"the initializer refused this worker: {msg.reason}"))
        self.node.finish(1)

    # -- the member list and the placement ------------------------------------------------

    def _on_members(self, conn: ControlLink, msg: control.Members) -> None:
        self.members = {w.name: w for w in msg.workers}
        self.leaving = msg.leaving
        names = [w.name for w in msg.workers if w.name not in msg.leaving]
        owners = tuple((state, tuple(o)) for state, o in msg.owners.items())
        placement = Placement(tuple(names), owners, msg.version)
        node = self.node
        if not self.built:
            self.built = True
            if not node.build(placement):
                return
        self.spawn(self._report_ready())  # again after a rejoin: the initializer may have restarted
        for w in msg.workers:
            if w.name != node.name:
                node.connect(w.name, w.data)
        new = self.placement is None or self.placement != placement
        self.placement = placement
        self.processing = not msg.changing  # until it resumes, as far as this worker knows
        self._save(msg)
        if msg.changing and new:
            self.handing_over = version = msg.version
            self.change_placement(placement, msg.leaving, lambda: self._migrated(version))
        elif msg.changing and self.handing_over is None:
            self._migrated(msg.version)  # told again (the initializer restarted): done

    def _save(self, msg: control.Members) -> None:
        assert self.placement is not None
        addresses = {w.name: (w.control, w.data) for w in msg.workers}
        target = self.placement if msg.changing else None
        self.node.save_record(Record(list(addresses), addresses, self.placement, target,
                                     msg.leaving))  # fmt: skip

    def _migrated(self, version: int) -> None:
        self.handing_over = None
        if self.conn is not None:
            self.conn.write(control.encode(control.Migrated(self.node.name, version)))

    async def _report_ready(self) -> None:
        await self.node.sinks_connected()
        if self.conn is not None:
            self.conn.write(control.encode(control.Ready(self.node.name)))
            self.node.recovery_complete()
            if self.join and not self.rejoin and not self.said_joined:
                self.said_joined = True
                say("***Successfully joined cluster!***")

    def _on_resume(self, conn: ControlLink, msg: control.Resume) -> None:
        for name in self.leaving:
            self.members.pop(name, None)
            self.node.forget(name)
        self.leaving = ()
        self.node.resume_placement()
        self.processing = True
        say("~~~Resuming message processing.~~~")

    def _on_leave(self, conn: ControlLink, msg: control.Leave) -> None:
        self.shutting_down = True
        self.spawn(self._leave())

    async def _leave(self) -> None:
        self.node.quiet_links()
        self.node.finish(await self.finish_shutdown(DRAIN_DEADLINE_S))

    # -- clean shutdown -------------------------------------------------------------------

    def _on_poll(self, conn: ControlLink, msg: control.Poll) -> None:
        if msg.shutdown:
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

    # -- requests from the external channel -----------------------------------------------

    def clean_shutdown(self, text: str) -> None:
        if self.conn is not None:
            self.conn.write(control.encode(control.ShutdownRequest(text)))
        else:
            warn("WARNING: clean shutdown requested while the initializer is unreachable")

    def shrink(self, text: str, reply: Reply) -> None:
        if self.conn is None:
            answer = "the initializer is unreachable; try again"
            reply(external.encode(external.SHRINK_ERROR_RESPONSE, answer))
            return
        request = next(self._requests)
        self._replies[request] = reply
        self.conn.write(control.encode(control.ShrinkRequest(request, text)))

    def _on_shrink_reply(self, conn: ControlLink, msg: control.ShrinkReply) -> None:
        reply = self._replies.pop(msg.request, None)
        if msg.msg_id == external.SHRINK_ERROR_RESPONSE and msg.text.startswith("Shrinking"):
            say("~~~Initiating shrink~~~")
        if reply is not None:
            reply(external.encode(msg.msg_id, msg.text))

    def rotate_log(self, target: str, reply: Reply | None = None) -> None:
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
        control.JoinVia: _on_join_via,
        control.Refused: _on_refused,
        control.Members: _on_members,
        control.Resume: _on_resume,
        control.Leave: _on_leave,
        control.ShrinkReply: _on_shrink_reply,
        control.Poll: _on_poll,
        control.Finish: _on_finish,
        control.Abort: _on_abort,
        control.RotateLog: _on_rotate_log,
    }


class Contact(Role):
    """Connections accepted on a worker's own control listener: a worker that wants to join
    the cluster through this one is told where the initializer is."""

    def __init__(self, member: Member) -> None:
        super().__init__(member.node, member.keys)
        self.member = member

    def _on_hello(self, conn: ControlLink, msg: control.Hello) -> None:
        if not msg.join and not msg.rejoin:
            return self._refuse(conn, f"{msg.name} did not ask to join (give it --join)")
        conn.write(control.encode(control.JoinVia(self.member.initializer)))
        if not msg.rejoin:
            say(JOIN_LINE.format(msg.name))

    HANDLERS = {control.Hello: _on_hello}
