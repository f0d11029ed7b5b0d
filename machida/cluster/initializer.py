"""The initializer's side of the control plane: admission, readiness, RotateLog routing.

The initializer listens on ``--control`` and admits each worker that says
``hello`` with the same topology fingerprint (:mod:`machida.cluster.membership`).
Once the cluster is complete it sends everyone the member list in join order
(``topology``), builds its own share and dials the others' data addresses.
When every member, itself included, reports ready it prints the ready lines
and starts reading its sources. A worker that restarts says ``hello`` again
and gets the topology again. A clean shutdown is coordinated from here
(:mod:`machida.cluster.shutdown`).
"""

from __future__ import annotations

import asyncio

from machida.cluster.membership import INITIALIZER, Membership
from machida.cluster.node import ControlLink, Node
from machida.cluster.role import Role
from machida.cluster.shutdown import ShutdownCoordinator
from machida.console import say, warn
from machida.wire import control

# machida.md §3: while workers are missing, the initializer says so every 10 s.
WAITING_EVERY_S = 10.0


class Initializer(Role):
    """The initializer's role: admission, readiness, and the shutdown coordinator."""

    def __init__(self, node: Node, expected: int) -> None:
        super().__init__(node)
        self.membership = Membership(expected, node.fingerprint_parts())
        self.started = False
        self.identified = False
        self.initialized = False
        self.coordinator = ShutdownCoordinator(node, self.membership)

    @property
    def expected(self) -> int:
        return self.membership.expected

    async def start(self) -> None:
        expected = self.expected
        say("Single worker topology" if expected == 1 else f"{expected} worker topology")
        control_addr, data_addr = await self.node.listen(self)
        me = self.membership.members[INITIALIZER]
        me.control, me.data = control_addr, data_addr
        self.started = True
        recovered = self.node.recovered
        if recovered is not None:
            self.membership.restore(recovered.workers, recovered.peers)
            self.identified = True
            self._build()
        elif not self._maybe_all_identified():
            self.spawn(self._waiting_lines())

    async def _waiting_lines(self) -> None:
        while not self.membership.complete:
            await asyncio.sleep(WAITING_EVERY_S)
            missing = self.expected - len(self.membership.members)
            if missing > 0:
                say(f"Waiting for {missing} more worker(s)")

    # -- control connections from workers ---------------------------------------------------

    def on_close(self, conn: ControlLink) -> None:
        name = self.membership.lost(conn)
        if name is not None:
            if not self.shutting_down:
                warn(f"WARNING: worker {name} control channel lost; waiting for it to rejoin")
            self.coordinator.wake()

    def _on_hello(self, conn: ControlLink, msg: control.Hello) -> None:
        name = msg.name
        admission = self.membership.admit(msg, conn.peer.rpartition(":")[0], conn)
        if admission.refused:
            warn(f"WARNING: refused worker '{name}' from {conn.peer}: {admission.refused}")
            conn.write(control.encode(control.Refused(admission.refused)))
            return
        say(f"Worker {name} control channel identified")
        if admission.rejoined and self.identified:  # a restarted worker rejoins
            self._send_topology()
            self.node.connect(name, self.membership.data_address(name))
        else:
            self._maybe_all_identified()

    def _maybe_all_identified(self) -> bool:
        if self.started and not self.identified and self.membership.complete:
            self._all_identified()
        return self.identified

    def _all_identified(self) -> None:
        self.identified = True
        if self.expected > 1:
            say("All worker channels identified")
        self._send_topology()
        if self._build():
            self.node.save_topology(self.membership.names, self.membership.addresses())

    def _build(self) -> bool:
        node = self.node
        if not node.build(self.membership.names):
            return False
        for name in self.membership.names:
            if name != INITIALIZER:
                node.connect(name, self.membership.data_address(name))
        self.spawn(self._self_ready())
        return True

    def _send_topology(self) -> None:
        message = control.encode(control.Members(self.membership.workers()))
        for member in self.membership.members.values():
            if member.conn is not None:
                member.conn.write(message)

    # -- readiness ------------------------------------------------------------------------

    async def _self_ready(self) -> None:
        await self.node.sinks_connected()
        self.membership.members[INITIALIZER].ready = True
        self._check_ready()

    def _on_ready(self, conn: ControlLink, msg: control.Ready) -> None:
        member = self.membership.members.get(msg.name)
        if member is not None and member.conn is conn:
            member.ready = True
            self._check_ready()

    def _check_ready(self) -> None:
        if self.initialized or not self.membership.all_ready:
            return
        self.initialized = True
        say(f"All {self.expected} workers reporting Topology ready!")
        say("Application has successfully initialized.")
        self.node.recovery_complete()
        self.node.start_sources()

    # -- requests from the external channel or from workers ------------------------------

    def clean_shutdown(self, text: str) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            self.spawn(self._shutdown())

    async def _shutdown(self) -> None:
        code = await self.coordinator.run(self.finish_shutdown)
        if code is None:
            self.abort_shutdown()
        else:
            self.node.finish(code)

    def _on_shutdown_request(self, conn: ControlLink, msg: control.ShutdownRequest) -> None:
        self.clean_shutdown(msg.reason)

    def rotate_log(self, target: str) -> None:
        member = self.membership.members.get(target)
        if target == INITIALIZER:
            self.node.rotate_log()
        elif member is not None and member.conn is not None:
            member.conn.write(control.encode(control.RotateLog(target)))
        else:
            warn(f"WARNING: RotateLog requested for unknown worker '{target}'")

    def _on_rotate_log(self, conn: ControlLink, msg: control.RotateLog) -> None:
        self.rotate_log(msg.worker)

    def _on_counts(self, conn: ControlLink, msg: control.Counts) -> None:
        member = self.membership.of(conn)
        if member is not None:
            self.coordinator.counts(member.name, msg)

    def _on_finished(self, conn: ControlLink, msg: control.Finished) -> None:
        self.coordinator.finished(msg.name)

    HANDLERS = {
        control.Hello: _on_hello,
        control.Ready: _on_ready,
        control.ShutdownRequest: _on_shutdown_request,
        control.RotateLog: _on_rotate_log,
        control.Counts: _on_counts,
        control.Finished: _on_finished,
    }
