"""Forming the cluster and taking it down: the control-channel side of a worker.

The initializer (:class:`Initializer`) listens on ``--control``, admits each
worker that says ``hello`` with the same topology fingerprint, and once the
cluster is complete sends everyone the member list in join order; key
placement follows from it. When every member (itself included) reports ready
it prints the ready lines and starts reading its sources. A worker
(:class:`Member`) dials the initializer until it answers, and dials it again
if the connection drops. Clean shutdown is coordinated by the initializer:
close the sources, then poll every member's counters until two rounds agree
that nothing is in flight, then tell everyone to flush their sinks and exit.
"""

from __future__ import annotations

import asyncio
import time

from machida.aio import wait_event
from machida.console import say, warn
from machida.runtime.links import Conn
from machida.wire import control
from machida.worker import Worker

# machida.md §3: a worker retries the initializer every 0.5 s and says so every 10 s.
CONTROL_RETRY_S = 0.5
WAITING_EVERY_S = 10.0
# machida.md §8.1: source connections are read until idle this long, and the drain is bounded.
SOURCE_IDLE_S = 0.5
DRAIN_DEADLINE_S = 30.0
POLL_EVERY_S = 0.02


class Role:
    """What both roles share: the worker they steer, control messages, the shutdown ending."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.shutting_down = False

    def on_data(self, conn: Conn, data: bytes) -> None:
        """Each control message goes to ``_on_<type>``; a corrupt one closes the connection."""
        if conn.state is None:
            return  # a connection on a member's own control listener: nothing to say
        for msg in conn.state.feed(data):
            handler = getattr(self, f"_on_{msg['type']}", None)
            if handler is not None:
                handler(conn, msg)
        if conn.state.error is not None:
            warn(f"ERROR: control connection with {conn.peer}: {conn.state.error}")
            conn.close()

    async def finish_shutdown(self, deadline_s: float) -> int:
        """Flush sinks, close, remove recovery files; 0 when everything left, else 1."""
        worker = self.worker
        if not await worker.drain_sinks(deadline_s):
            self._not_drained()
            return 1
        worker.close_everything()
        worker.remove_recovery_files()
        say("Connections: Finished shutdown procedure.")
        return 0

    def abort_shutdown(self) -> None:
        self._not_drained()
        self.worker.finish(1)

    def _not_drained(self) -> None:
        warn(f"ERROR: clean shutdown could not drain: {self.worker.leftovers()}")


class Initializer(Role):
    """The initializer's side: admission, readiness, and the shutdown coordinator."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        cfg = worker.config
        self.expected = cfg.worker_count
        # name -> {control, data, conn, ready}, in join order: the initializer is first
        # even when a worker says hello while the initializer is still binding.
        self.members: dict[str, dict] = {
            "initializer": {"control": None, "data": None, "conn": None, "ready": False}
        }
        self.started = False
        self.identified = False
        self.initialized = False
        self.replies: dict[str, dict] = {}
        self.finished: set[str] = set()
        self._poll_round = 0
        self._reply_event = asyncio.Event()

    async def start(self) -> None:
        worker = self.worker
        say("Single worker topology" if self.expected == 1 else f"{self.expected} worker topology")
        await worker.bind_sources()
        control_addr = worker.config.control or ("127.0.0.1", 0)
        await worker.bind("control", control_addr)
        await worker.bind("data", worker.config.data)
        await worker.bind_external()
        me = self.members["initializer"]
        me["control"], me["data"] = list(worker.bound["control"]), list(worker.bound["data"])
        self.started = True
        if worker.recovered is not None:
            self._recover(worker.recovered)
        elif not self._maybe_all_identified():
            asyncio.get_running_loop().create_task(self._waiting_lines())

    async def _waiting_lines(self) -> None:
        while len(self.members) < self.expected:
            await asyncio.sleep(WAITING_EVERY_S)
            missing = self.expected - len(self.members)
            if missing > 0:
                say(f"Waiting for {missing} more worker(s)")

    # control connections from workers
    def on_open(self, conn: Conn) -> None:
        conn.state = control.ControlDecoder()

    def on_close(self, conn: Conn) -> None:
        for name, member in self.members.items():
            if member["conn"] is conn:
                member["conn"] = None
                member["ready"] = False
                if not self.shutting_down:
                    warn(f"WARNING: worker {name} control channel lost; waiting for it to rejoin")
                self._reply_event.set()

    def _refuse(self, conn: Conn, name: str, reason: str) -> None:
        warn(f"WARNING: refused worker '{name}' from {conn.peer}: {reason}")
        conn.write(control.encode("refused", reason=reason))

    def _on_hello(self, conn: Conn, msg: dict) -> None:
        name = str(msg.get("name"))
        mismatch = self._mismatch(msg)
        if mismatch:
            return self._refuse(conn, name, mismatch)
        known = self.members.get(name)
        if name == "initializer" or (known is not None and known["conn"] is not None):
            return self._refuse(conn, name, f"a worker named '{name}' has already joined")
        if known is None and len(self.members) >= self.expected:
            return self._refuse(conn, name, f"the cluster already has its {self.expected} workers")
        host = conn.peer.rpartition(":")[0]
        self.members[name] = {
            "control": [host, int(msg["control"][1])],
            "data": [host, int(msg["data"][1])],
            "conn": conn,
            "ready": False,
        }
        say(f"Worker {name} control channel identified")
        if known is not None and self.identified:  # a restarted worker rejoins
            self._send_topology()
            self.worker.connect_link(name, *self.members[name]["data"])
        else:
            self._maybe_all_identified()

    def _maybe_all_identified(self) -> bool:
        if self.started and not self.identified and len(self.members) == self.expected:
            self._all_identified()
        return self.identified

    def _mismatch(self, msg: dict) -> str:
        mine = self.worker.plan.fingerprint_parts(self.worker.config.resilience)
        theirs = [str(x) for x in msg.get("plan", [])]
        if theirs == mine:
            return ""
        for a, b in zip(mine, [*theirs, *[""] * len(mine)]):
            if a != b:
                return f"its application differs from the initializer's: '{b}' vs '{a}'"
        return "its application differs from the initializer's"

    def _all_identified(self) -> None:
        self.identified = True
        if self.expected > 1:
            say("All worker channels identified")
        self._send_topology()
        self._build()
        addresses = {n: (m["control"], m["data"]) for n, m in self.members.items()}
        self.worker.save_topology(list(self.members), addresses)

    def _build(self) -> None:
        worker = self.worker
        worker.build_topology(list(self.members))
        for name, member in self.members.items():
            if name != "initializer":
                worker.connect_link(name, *member["data"])
        asyncio.get_running_loop().create_task(self._self_ready())

    def _recover(self, recorded) -> None:
        """Restarted from recovery files: the same members, who will rejoin."""
        for peer in recorded.peers:
            data = list(peer.data) if peer.data else None
            self.members[peer.name] = {"control": list(peer.control), "data": data,
                                       "conn": None, "ready": False}  # fmt: skip
        self.members = {name: self.members[name] for name in recorded.workers}
        self.identified = True
        self._build()

    def _send_topology(self) -> None:
        workers = [{"name": n, "control": m["control"], "data": m["data"]}
                   for n, m in self.members.items()]  # fmt: skip
        for member in self.members.values():
            if member["conn"] is not None:
                member["conn"].write(control.encode("topology", workers=workers))

    async def _self_ready(self) -> None:
        await self.worker.sinks_connected()
        self.members["initializer"]["ready"] = True
        self._check_ready()

    def _on_ready(self, conn: Conn, msg: dict) -> None:
        member = self.members.get(str(msg.get("name")))
        if member is not None and member["conn"] is conn:
            member["ready"] = True
            self._check_ready()

    def _check_ready(self) -> None:
        if self.initialized or not all(m["ready"] for m in self.members.values()):
            return
        if len(self.members) < self.expected:
            return
        self.initialized = True
        say(f"All {self.expected} workers reporting Topology ready!")
        say("Application has successfully initialized.")
        recovery_complete(self.worker)
        self.worker.start_sources()

    # clean shutdown
    def _on_shutdown_request(self, conn: Conn, msg: dict) -> None:
        self.request_shutdown(msg.get("reason", ""))

    def request_shutdown(self, text: str) -> None:
        if not self.shutting_down:
            self.shutting_down = True
            asyncio.get_running_loop().create_task(self._shutdown())

    def rotate_log(self, target: str) -> None:
        member = self.members.get(target)
        if target == "initializer":
            rotate_own_log(self.worker)
        elif member is not None and member["conn"] is not None:
            member["conn"].write(control.encode("rotate_log", worker=target))
        else:
            warn(f"WARNING: RotateLog requested for unknown worker '{target}'")

    def _on_rotate_log(self, conn: Conn, msg: dict) -> None:
        self.rotate_log(str(msg.get("worker")))

    def _on_counts(self, conn: Conn, msg: dict) -> None:
        for name, member in self.members.items():
            if member["conn"] is conn and msg.get("round") == self._poll_round:
                self.replies[name] = msg
                self._reply_event.set()

    def _on_finished(self, conn: Conn, msg: dict) -> None:
        self.finished.add(str(msg.get("name")))
        self._reply_event.set()

    async def _shutdown(self) -> None:
        worker = self.worker
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DRAIN_DEADLINE_S
        for server in worker.source_servers:
            server.close()
        drained = await self._drain_sources(deadline)
        if not drained or not await self._quiescent(deadline):
            for member in self._others():
                member["conn"].write(control.encode("abort", reason="drain deadline passed"))
            return self.abort_shutdown()
        worker.quiet_links()
        for member in self._others():
            member["conn"].write(control.encode("finish"))
        await self._wait_finished(deadline)
        worker.finish(await self.finish_shutdown(max(0.1, deadline - loop.time())))

    async def _drain_sources(self, deadline: float) -> bool:
        """Read each open source connection until its client closes it or it idles 0.5 s."""
        worker = self.worker
        loop = asyncio.get_running_loop()
        while worker.source_conns:
            if loop.time() >= deadline:
                return False
            now = time.monotonic()
            for conn in list(worker.source_conns):
                if worker.pause_reasons:  # time spent paused is not idle time
                    conn.last_read = now
                if now - conn.last_read >= SOURCE_IDLE_S:
                    conn.close()
            await asyncio.sleep(0.05)
        return True

    def _others(self) -> list[dict]:
        return [m for n, m in self.members.items() if n != "initializer" and m["conn"]]

    async def _quiescent(self, deadline: float) -> bool:
        """True once two polling rounds in a row see the same counts and no unacked message."""
        loop = asyncio.get_running_loop()
        previous = None
        while loop.time() < deadline:
            self.worker.flush()
            self._poll_round += 1
            self.replies = {}
            others = self._others()
            for member in others:
                member["conn"].write(control.encode("poll", round=self._poll_round))
            while len(self.replies) < len(others) and loop.time() < deadline:
                self._reply_event.clear()
                if not await wait_event(self._reply_event, 0.5):
                    break
            counts = [self.worker.counts(), *self.replies.values()]
            total = tuple(sum(c[k] for c in counts) for k in ("sent", "applied", "backlog"))
            complete = len(self.replies) == len(others) == self.expected - 1
            # Every record sent has been acknowledged, i.e. applied (a restarted worker's
            # "applied" starts again from zero, so sent and applied are not compared).
            if complete and total[2] == 0 and total == previous:
                return True
            previous = total if complete else None
            await asyncio.sleep(POLL_EVERY_S)
        return False

    async def _wait_finished(self, deadline: float) -> None:
        loop = asyncio.get_running_loop()
        names = set(self.members) - {"initializer"}
        while not names <= self.finished and self._others() and loop.time() < deadline:
            self._reply_event.clear()
            await wait_event(self._reply_event, 0.5)


class Member(Role):
    """A worker's side: dial the initializer, build when told, answer polls."""

    def __init__(self, worker: Worker) -> None:
        super().__init__(worker)
        self.conn: Conn | None = None
        self.members: dict[str, dict] = {}
        self.built = False
        self.rejoin = False
        self.my_control = self.my_data = 0

    async def start(self) -> None:
        worker = self.worker
        await worker.bind("control", worker.config.my_control)
        await worker.bind("data", worker.config.my_data)
        self.my_control, self.my_data = worker.bound["control"][1], worker.bound["data"][1]
        self.rejoin = worker.recovered is not None
        await worker.bind_external()
        asyncio.get_running_loop().create_task(self._dial())

    async def _dial(self) -> None:
        loop = asyncio.get_running_loop()
        host, port = self.worker.config.control
        last_line = -WAITING_EVERY_S
        while not self.shutting_down:
            try:
                await loop.create_connection(lambda: Conn(self, "control"), host, port)
                return
            except OSError:
                now = time.monotonic()
                if now - last_line >= WAITING_EVERY_S:
                    say(f"Waiting for initializer at {host}:{port}")
                    last_line = now
                await asyncio.sleep(CONTROL_RETRY_S)

    def on_open(self, conn: Conn) -> None:
        if conn.kind != "control" or conn.owner is not self:
            return  # an incoming connection on our own control listener: nothing to say
        self.conn = conn
        conn.state = control.ControlDecoder()
        cfg = self.worker.config
        conn.write(control.encode(
            "hello", name=self.worker.name, control=[cfg.my_control[0], self.my_control],
            data=[cfg.my_data[0], self.my_data], rejoin=self.rejoin,
            plan=self.worker.plan.fingerprint_parts(cfg.resilience),
        ))  # fmt: skip

    def on_close(self, conn: Conn) -> None:
        if conn is not self.conn:
            return
        self.conn = None
        if not self.shutting_down and self.worker.finished and not self.worker.finished.done():
            warn("WARNING: control channel to the initializer lost; reconnecting")
            self.rejoin = True
            asyncio.get_running_loop().create_task(self._dial())

    def _on_refused(self, conn: Conn, msg: dict) -> None:
        warn(f"Error: the initializer refused this worker: {msg.get('reason')}")
        self.worker.finish(1)

    def _on_topology(self, conn: Conn, msg: dict) -> None:
        workers = msg["workers"]
        self.members = {w["name"]: w for w in workers}
        worker = self.worker
        if not self.built:
            self.built = True
            names = [w["name"] for w in workers]
            worker.build_topology(names)
            addresses = {w["name"]: (w["control"], w["data"]) for w in workers}
            worker.save_topology(names, addresses)
        asyncio.get_running_loop().create_task(self._report_ready())
        for w in workers:
            if w["name"] != worker.name:
                worker.connect_link(w["name"], w["data"][0], int(w["data"][1]))

    async def _report_ready(self) -> None:
        await self.worker.sinks_connected()
        if self.conn is not None:
            self.conn.write(control.encode("ready", name=self.worker.name))
            recovery_complete(self.worker)

    def _on_poll(self, conn: Conn, msg: dict) -> None:
        self.shutting_down = True
        self.worker.flush()
        conn.write(control.encode("counts", round=msg["round"], **self.worker.counts()))

    def _on_finish(self, conn: Conn, msg: dict) -> None:
        asyncio.get_running_loop().create_task(self._finish())

    async def _finish(self) -> None:
        self.worker.quiet_links()
        code = await self.finish_shutdown(DRAIN_DEADLINE_S)
        if self.conn is not None:
            self.conn.write(control.encode("finished", name=self.worker.name, code=code))
        self.worker.finish(code)

    def _on_abort(self, conn: Conn, msg: dict) -> None:
        self.abort_shutdown()

    def request_shutdown(self, text: str) -> None:
        if self.conn is not None:
            self.conn.write(control.encode("shutdown_request", reason=text))
        else:
            warn("WARNING: clean shutdown requested while the initializer is unreachable")

    def rotate_log(self, target: str) -> None:
        if target == self.worker.name:
            rotate_own_log(self.worker)
        elif target in self.members and self.conn is not None:
            self.conn.write(control.encode("rotate_log", worker=target))
        else:
            warn(f"WARNING: RotateLog requested for unknown worker '{target}'")

    def _on_rotate_log(self, conn: Conn, msg: dict) -> None:
        if msg.get("worker") == self.worker.name:
            rotate_own_log(self.worker)


def rotate_own_log(worker: Worker) -> None:
    """RotateLog for this worker. Event logs exist only with resilience."""
    if worker.resilience is None:
        say("WARNING: LogRotation requested, but log_rotation is off!")
    else:
        worker.resilience.request_rotation()


def recovery_complete(worker: Worker) -> None:
    """Once a recovering worker is back in the cluster (resilience mode), say so once."""
    if worker.recovered is not None and worker.resilience is not None:
        say("|~~ - Recovery COMPLETE - ~~|")
        worker.recovered = None


async def start_cluster(worker: Worker) -> None:
    """Give ``worker`` its role and start it."""
    role = Initializer(worker) if worker.config.initializer else Member(worker)
    worker.cluster = role
    await role.start()
