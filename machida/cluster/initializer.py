"""The initializer's side of the control plane: admission, readiness, changes, RotateLog routing.

The initializer listens on ``--control`` and admits each worker that says
``hello`` with the same topology fingerprint (:mod:`machida.cluster.membership`).
Once the cluster is complete it sends everyone the member list in join order
and the placement of the keys (``topology``), builds its own share and dials
the others' data addresses. When every member, itself included, reports ready
it prints the ready lines and starts reading its sources. A worker that
restarts says ``hello`` again and gets the topology again.

Once running, the cluster grows and shrinks from here, one change at a time
(:mod:`machida.cluster.autoscale`): a round of joiners that is complete, a
shrink asked on any worker's external channel, a change a restarted initializer
finds in progress, or a restart with another ``--worker-count``. A clean
shutdown is coordinated from here too (:mod:`machida.cluster.shutdown`), after
any change in progress.
"""

from __future__ import annotations

import asyncio
import json

from machida.aio import wait_event
from machida.app.plan import Placement, round_robin
from machida.cluster.autoscale import Rescale, decide_shrink
from machida.cluster.drain import Drain
from machida.cluster.membership import INITIALIZER, Member, Membership
from machida.cluster.node import ControlLink, Node, Record
from machida.cluster.role import Reply, Role
from machida.cluster.shutdown import ShutdownCoordinator
from machida.console import say, warn
from machida.wire import control, external

# machida.md §3: while workers are missing, the initializer says so every 10 s.
WAITING_EVERY_S = 10.0
JOIN_LINE = "***Worker {} attempting to join the cluster. Sent necessary information.***"


class Initializer(Role):
    """The initializer's role: admission, readiness, changes and the shutdown coordinator."""

    def __init__(self, node: Node, expected: int, keys: dict[str, tuple],
                 stop_pause_s: float = 0.0,
                 state_off_initializer: bool = False) -> None:  # fmt: skip
        super().__init__(node, keys)
        self.state_off_initializer = state_off_initializer  # for a cluster that forms now
        self.membership = Membership(expected, node.fingerprint_parts())
        self.requested = expected  # --worker-count, as recorded
        self.wanted = expected  # the size to rescale to at a restart that asks for another
        self.stop_pause_s = stop_pause_s
        self.started = False
        self.identified = False
        self.initialized = False
        self.drain = Drain(node, self.membership)
        self.coordinator = ShutdownCoordinator(node, self.membership, self.drain)
        self.change: tuple[Placement, tuple[str, ...]] | None = None  # target, leaving
        self.departed: tuple[str, ...] = ()  # left in the last change
        self.rescale: Rescale | None = None
        self.shrinks: list[list[str]] = []
        self._next = asyncio.Event()  # something for the changes loop to look at

    @property
    def expected(self) -> int:
        return self.membership.expected

    async def start(self) -> None:
        expected = self.expected
        say("Single worker topology" if expected == 1 else f"{expected} worker topology")
        control_addr, data_addr = await self.node.listen(self.accepting(), self)
        me = self.membership.members[INITIALIZER]
        me.control, me.data = control_addr, data_addr
        self.started = True
        recovered = self.node.recovered
        if recovered is not None:
            self.membership.restore(recovered.workers, recovered.peers)
            self.placement = recovered.placement or round_robin(
                recovered.workers, self.keys, self.state_off_initializer
            )
            if self.state_off_initializer and not self.placement.state_off_initializer:
                warn("WARNING: --state-off-initializer ignored: this cluster formed without it, "
                     "and its recorded placement is kept")  # fmt: skip
            elif self.placement.state_off_initializer and not self.state_off_initializer:
                warn("WARNING: the recorded placement keeps the keys off the initializer "
                     "(the cluster formed with --state-off-initializer)")  # fmt: skip
            if recovered.target is not None:
                self.change = (recovered.target, recovered.leaving)
            else:
                self.departed = recovered.leaving
            if recovered.requested_count == self.wanted:  # the same command: keep the members
                self.wanted = len(recovered.workers)
            self._rescale_on_restart()
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
            self._wake()

    def _on_hello(self, conn: ControlLink, msg: control.Hello) -> None:
        name = msg.name
        if msg.rejoin and name in self.departed and name not in self.membership.members:
            # it left, but stopped before it heard so and restarted from its files: it may go
            conn.write(control.encode(control.Leave(self._version())))
            return
        admission = self.membership.admit(msg, conn.peer.rpartition(":")[0], conn)
        if admission.refused:
            warn(f"WARNING: refused worker '{name}' from {conn.peer}: {admission.refused}")
            conn.write(control.encode(control.Refused(admission.refused)))
            return
        if admission.joining:
            if not admission.rejoined and msg.join:
                say(JOIN_LINE.format(name))
            self._next.set()
            return
        say(f"Worker {name} control channel identified")
        if admission.rejoined and self.identified:  # a restarted worker rejoins
            conn.write(self._members_message())
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
        self.placement = round_robin(self.membership.names, self.keys, self.state_off_initializer)
        self.send_members()
        if self._build():
            self.save_record()

    def _build(self) -> bool:
        node = self.node
        assert self.placement is not None
        if not node.build(self.placement):
            return False
        for name in self.membership.names:
            if name != INITIALIZER:
                node.connect(name, self.membership.data_address(name))
        self.spawn(self._self_ready())
        return True

    # -- what the workers are told ---------------------------------------------------------

    def _version(self) -> int:
        return self.change[0].version if self.change else self.placement.version if \
            self.placement else 0  # fmt: skip

    def _members_message(self) -> bytes:
        """The member list and the placement (the one changing to, during a change)."""
        target, leaving = self.change if self.change else (self.placement, ())
        assert target is not None
        owners = {name: tuple(owners) for name, owners in target.owners}
        return control.encode(control.Members(self.membership.workers(), target.version, owners,
                                              self.change is not None, leaving))  # fmt: skip

    def send_members(self) -> None:
        self.tell(list(self.membership.members.values()), self._members_message())

    @staticmethod
    def tell(members: list[Member], message: control.ControlMessage | bytes) -> None:
        frame = message if isinstance(message, bytes) else control.encode(message)
        for member in members:
            if member.conn is not None:
                member.conn.write(frame)

    def save_record(self) -> None:
        """The cluster as it stands, in this worker's recovery files."""
        assert self.placement is not None
        target, leaving = self.change if self.change else (None, self.departed)
        names = self.membership.names
        self.node.save_record(Record(names, self.membership.addresses(), self.placement,
                                     target, leaving, self.requested))  # fmt: skip

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
            self._wake()

    def _check_ready(self) -> None:
        if self.initialized or not self.membership.all_ready:
            return
        self.initialized = True
        say(f"All {self.expected} workers reporting Topology ready!")
        say("Application has successfully initialized.")
        self.node.recovery_complete()
        self.processing = self.change is None
        if self.processing:
            self.node.start_sources()
        self.spawn(self._changes())

    # -- growing and shrinking -----------------------------------------------------------

    def _wake(self) -> None:
        self.drain.wake()
        if self.rescale is not None:
            self.rescale.wake()

    async def _changes(self) -> None:
        """Run the changes of the cluster one at a time, in the order they came."""
        while not self.shutting_down:
            rescale = self._next_change()
            if rescale is None:
                self._next.clear()
                await self._next.wait()
                continue
            self.rescale = rescale
            try:
                await rescale.run()
            finally:
                self.rescale = None

    def _rescale_on_restart(self) -> None:
        """A cluster restarted with another --worker-count: grow to it, or shrink to it."""
        have = len(self.membership.names)
        if self.wanted > have:
            self.membership.round = self.wanted - have  # new workers join as one round
        elif self.wanted < have:
            self.shrinks.append(self.membership.names[self.wanted :])

    def _next_change(self) -> Rescale | None:
        if self.change is not None:  # recorded by an initializer that stopped in the middle
            target, leaving = self.change
            return Rescale(self, [], list(leaving), target)
        if self.membership.round_complete:
            joiners = self.membership.take_round()
            self.save_record()
            self.send_members()
            for member in joiners:
                self.node.connect(member.name, self.membership.data_address(member.name))
            return Rescale(self, [m.name for m in joiners], [])
        while self.shrinks:
            names = [n for n in self.shrinks.pop(0) if n in self.membership.members]
            if names:
                return Rescale(self, [], names)
        if self.placement is not None and list(self.placement.workers) != self.membership.names:
            return Rescale(self, [], [])  # members recorded, their keys not yet placed
        return None

    def _on_migrated(self, conn: ControlLink, msg: control.Migrated) -> None:
        if self.rescale is not None:
            self.rescale.worker_migrated(msg.name, msg.version)

    def shrink(self, text: str, reply: Reply) -> None:
        msg_id, answer = self._shrink(text)
        reply(external.encode(msg_id, answer))

    def _shrink(self, text: str) -> tuple[int, str]:
        """A shrink request, from any worker's external channel: the answer to give."""
        busy = {n for leaving in self.shrinks for n in leaving}
        if self.change is not None:
            busy.update(self.change[1])
        decision = decide_shrink(text, self.membership.names, busy)
        if decision.query:
            names = [n for n in self.membership.names if n != INITIALIZER and n not in busy]
            answer = json.dumps({"node_names": names, "node_count": len(names)})
            return external.SHRINK_QUERY_RESPONSE, answer
        if decision.leaving:
            say("~~~Initiating shrink~~~")
            self.shrinks.append(decision.leaving)
            self._next.set()
        else:
            warn(f"WARNING: shrink refused: {decision.answer}")
        return external.SHRINK_ERROR_RESPONSE, decision.answer

    def _on_shrink_request(self, conn: ControlLink, msg: control.ShrinkRequest) -> None:
        msg_id, answer = self._shrink(msg.text)
        conn.write(control.encode(control.ShrinkReply(msg.request, msg_id, answer)))

    # -- requests from the external channel or from workers ------------------------------

    def clean_shutdown(self, text: str) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            self._next.set()
            self.spawn(self._shutdown())

    async def _shutdown(self) -> None:
        while self.rescale is not None:  # a change in progress ends first
            await wait_event(self.drain.event, 0.1)
        code = await self.coordinator.run(self.finish_shutdown)
        if code is None:
            self.abort_shutdown()
        else:
            self.node.finish(code)

    def _on_shutdown_request(self, conn: ControlLink, msg: control.ShutdownRequest) -> None:
        self.clean_shutdown(msg.reason)

    def rotate_log(self, target: str, reply: Reply | None = None) -> None:
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
            self.drain.counts(member.name, msg)

    def _on_finished(self, conn: ControlLink, msg: control.Finished) -> None:
        self.coordinator.finished(msg.name)

    HANDLERS = {
        control.Hello: _on_hello,
        control.Ready: _on_ready,
        control.Migrated: _on_migrated,
        control.ShrinkRequest: _on_shrink_request,
        control.ShutdownRequest: _on_shutdown_request,
        control.RotateLog: _on_rotate_log,
        control.Counts: _on_counts,
        control.Finished: _on_finished,
    }
