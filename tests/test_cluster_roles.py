"""The control plane in-process (machida/cluster/): the roles against fake workers, no sockets.

Each role steers a :class:`FakeNode` (what :class:`machida.cluster.node.Node`
declares, recording what it was asked) and talks over in-memory control
connections: two real :class:`~machida.runtime.channels.ControlChannel`
protocols whose transports hand every write to the other end on the next
loop turn. Membership and quiescence are checked as the pure objects they are.
"""

from __future__ import annotations

import asyncio
import itertools
import json

import pytest

from machida.app.loader import load_plan
from machida.cli import parse_runner_args
from machida.cluster import shutdown
from machida.cluster.initializer import Initializer
from machida.cluster.member import Member
from machida.cluster.membership import Membership
from machida.cluster.node import Node
from machida.cluster.quiescence import Quiescence
from machida.durability.recovery import Peer, RecoveryRecord
from machida.process import Process
from machida.runtime.channels import ControlChannel
from machida.wire import control
from machida.wire.framing import encode_frame

PLAN = ["module=app", "app=App", "resilience=False", "pipeline=P"]
KEYS = {"s": (0, 1, 2)}
INITIALIZER_AT = ("10.0.0.1", 6000)
_ports = itertools.count(7000)


class FakeNode:
    """A worker as the control plane sees it; ``asked`` lists the verbs it was given."""

    def __init__(self, name: str, plan=PLAN, recovered: RecoveryRecord | None = None) -> None:
        self.name = name
        self.plan = list(plan)
        self.recovered = recovered
        self.asked: list[tuple] = []
        self.code: int | None = None
        self.ended = asyncio.Event()
        self.rounds = []  # counts to answer, one per poll; the last repeats
        self.control = ("10.0.0.9" if name != "initializer" else INITIALIZER_AT[0], next(_ports))
        self.data = (self.control[0], next(_ports))

    @property
    def running(self) -> bool:
        return self.code is None

    def fingerprint_parts(self) -> list[str]:
        return self.plan

    async def listen(self, accepting, commands):
        self.asked.append(("listen",))
        if self.name == "initializer":
            LISTENING[INITIALIZER_AT] = accepting
        return self.control, self.data

    def _note(self, *what) -> None:
        self.asked.append(what)

    def build(self, placement):
        self._note("build", list(placement.workers))
        return True

    def save_record(self, record):
        self._note("save_topology", list(record.workers))

    def change_placement(self, placement, done):
        self._note("change_placement", placement.version)
        return []  # nothing held to hand over: the role goes on at once

    def resume_placement(self):
        self._note("resume_placement")

    def forget(self, peer):
        self._note("forget", peer)

    def hold_sources(self, held):
        self._note("hold_sources", held)

    def connect(self, peer, data):
        self._note("connect", peer, *data)

    async def sinks_connected(self):
        await asyncio.sleep(0)

    def start_sources(self):
        self._note("start_sources")

    def stop_sources(self):
        self._note("stop_sources")

    def flush(self):
        self._note("flush")

    def counts(self):
        row = self.rounds.pop(0) if len(self.rounds) > 1 else (self.rounds or [(0, 0, 0)])[0]
        return dict(zip(("sent", "applied", "backlog"), row))

    def leftovers(self):
        return "nothing"

    async def drain_sinks(self, seconds):
        return True

    def quiet_links(self):
        self._note("quiet_links")

    def close(self, clean):
        self._note("close", clean)

    def rotate_log(self):
        self._note("rotate_log")

    def recovery_complete(self):
        self._note("recovery_complete")

    def finish(self, code):
        if self.code is None:
            self.code = code
            self.ended.set()

    def verbs(self) -> list[str]:
        return [what[0] for what in self.asked]


# -- in-memory control connections ----------------------------------------------------------

LISTENING: dict[tuple, object] = {}  # address -> the initializer role listening there


class MemoryTransport:
    """One end of an in-memory connection: writes reach the other protocol next loop turn."""

    def __init__(self, protocol, peer: tuple) -> None:
        self.protocol, self.peer, self.other = protocol, peer, None
        self.closed = False
        self.loop = asyncio.get_running_loop()

    def get_extra_info(self, name):
        return self.peer if name == "peername" else None

    def write(self, data: bytes) -> None:
        if not self.closed:
            self.loop.call_soon(self.other.protocol.data_received, data)

    def close(self) -> None:
        for end in (self, self.other):
            if not end.closed:
                end.closed = True
                self.loop.call_soon(end.protocol.connection_lost, None)

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


def pipe(dialler: ControlChannel, acceptor: ControlChannel, dialler_at: tuple, acceptor_at):
    a, b = MemoryTransport(dialler, acceptor_at), MemoryTransport(acceptor, dialler_at)
    a.other, b.other = b, a
    acceptor.connection_made(b)
    dialler.connection_made(a)
    return a


class Silent:
    """The role of a dialling end that only sends what the test writes."""

    def on_open(self, conn) -> None: ...

    def on_message(self, conn, message) -> None: ...

    def on_close(self, conn) -> None: ...


def dialler_for(node: FakeNode):
    """The member's dial: connect to whatever initializer role listens at the address."""

    async def dial(role, host: str, port: int) -> None:
        listening = LISTENING.get((host, port))
        if listening is None:
            raise ConnectionRefusedError(111, "Connection refused")
        pipe(ControlChannel(role), ControlChannel(listening), (node.control[0], 50000),
             (host, port))  # fmt: skip

    return dial


async def until(predicate, timeout: float = 5.0) -> None:
    """Run the loop until ``predicate()`` holds (deadline: a failure, not a hang)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.001)


async def form(expected: int = 2, **members):
    """An initializer and ``expected - 1`` members, started and ready."""
    LISTENING.clear()
    init = FakeNode("initializer")
    role = Initializer(init, expected, KEYS)
    await role.start()
    workers = []
    for i in range(2, expected + 1):
        node = FakeNode(f"worker-{i}", **members)
        member = Member(node, INITIALIZER_AT, dialler_for(node), KEYS)
        await member.start()
        workers.append((node, member))
    await until(lambda: "start_sources" in init.verbs())
    return init, role, workers


# -- formation -------------------------------------------------------------------------------


def test_a_cluster_forms_builds_in_join_order_and_starts_its_sources(capsys):
    async def scenario():
        init, _, [(node, member)] = await form()
        order = ["initializer", "worker-2"]
        assert ("build", order) in init.asked and ("build", order) in node.asked
        assert ("save_topology", order) in init.asked and ("save_topology", order) in node.asked
        # each side dials the other's data address; the initializer takes the worker's host
        # from its control connection and the port from its hello
        assert ("connect", "worker-2", "10.0.0.9", node.data[1]) in init.asked
        assert ("connect", "initializer", *init.data) in node.asked
        assert "recovery_complete" in node.verbs() and "recovery_complete" in init.verbs()
        assert member.conn is not None

    asyncio.run(scenario())
    out = capsys.readouterr().out.splitlines()
    lines = ["2 worker topology", "Worker worker-2 control channel identified",
             "All worker channels identified", "All 2 workers reporting Topology ready!",
             "Application has successfully initialized."]  # fmt: skip
    assert [line for line in out if line in lines] == lines


def test_a_worker_started_first_waits_for_the_initializer(capsys):
    async def scenario():
        LISTENING.clear()
        node = FakeNode("worker-2")
        await Member(node, INITIALIZER_AT, dialler_for(node), KEYS).start()
        await asyncio.sleep(0.01)
        init = FakeNode("initializer")
        await Initializer(init, 2, KEYS).start()
        await until(lambda: "start_sources" in init.verbs())

    asyncio.run(scenario())
    assert "Waiting for initializer at 10.0.0.1:6000" in capsys.readouterr().out


def test_a_single_worker_cluster_is_ready_at_once(capsys):
    async def scenario():
        init, _, _ = await form(expected=1)
        assert ("build", ["initializer"]) in init.asked

    asyncio.run(scenario())
    assert "Single worker topology" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("second", "reason"),
    [
        ({"name": "worker-2"}, "a worker named 'worker-2' has already joined"),
        ({"name": "worker-3"}, "the cluster already has its 2 workers"),
        ({"name": "worker-3", "plan": [*PLAN[:3], "pipeline=Q"]},
         "its application differs from the initializer's: 'pipeline=Q' vs 'pipeline=P'"),
    ],
)  # fmt: skip
def test_the_initializer_refuses_a_worker_it_cannot_take(second, reason, capsys):
    async def scenario():
        await form()
        node = FakeNode(second["name"], plan=second.get("plan", PLAN))
        await Member(node, INITIALIZER_AT, dialler_for(node), KEYS).start()
        await node.ended.wait()
        assert node.code == 1 and "build" not in node.verbs()

    asyncio.run(scenario())
    err = capsys.readouterr().err
    assert f"Error: the initializer refused this worker: {reason}" in err
    assert f"WARNING: refused worker '{second['name']}'" in err


def test_a_worker_whose_control_connection_drops_rejoins_without_rebuilding(capsys):
    async def scenario():
        init, _, [(node, member)] = await form()
        member.conn.transport.close()
        await until(lambda: member.conn is not None and member.rejoin)
        await until(lambda: init.verbs().count("connect") == 2)
        await until(lambda: node.verbs().count("connect") == 2)
        assert node.verbs().count("build") == 1 and init.verbs().count("build") == 1

    asyncio.run(scenario())
    captured = capsys.readouterr()
    assert "WARNING: worker worker-2 control channel lost; waiting for it to rejoin" in captured.err
    assert "WARNING: control channel to the initializer lost; reconnecting" in captured.err


def test_a_recovered_initializer_builds_the_recorded_cluster_before_anyone_says_hello():
    recorded = RecoveryRecord(
        module="app", worker="initializer", fingerprint="f", worker_count=2,
        workers=("initializer", "worker-2"), owned_keys={}, resilience=True,
        control=INITIALIZER_AT, data=("10.0.0.1", 6001),
        peers={"worker-2": {"control": ("10.0.0.9", 7100), "data": ("10.0.0.9", 7101)}},
    )  # fmt: skip
    assert recorded.peers == (Peer("worker-2", ("10.0.0.9", 7100), ("10.0.0.9", 7101)),)

    async def scenario():
        LISTENING.clear()
        init = FakeNode("initializer", recovered=recorded)
        await Initializer(init, 2, KEYS).start()
        assert init.asked[1:3] == [("build", ["initializer", "worker-2"]),
                                   ("connect", "worker-2", "10.0.0.9", 7101)]  # fmt: skip
        node = FakeNode("worker-2")
        await Member(node, INITIALIZER_AT, dialler_for(node), KEYS).start()
        await until(lambda: "start_sources" in init.verbs())
        assert ("connect", "worker-2", "10.0.0.9", node.data[1]) in init.asked

    asyncio.run(scenario())


# -- clean shutdown --------------------------------------------------------------------------


def test_clean_shutdown_stops_the_sources_waits_for_quiescence_then_ends_everyone(capsys):
    async def scenario():
        init, role, [(node, member)] = await form()
        # the worker's counters move for two rounds, then settle with nothing unacknowledged
        node.rounds = [(0, 5, 0), (0, 9, 0), (0, 12, 0)]
        init.rounds = [(12, 0, 7), (12, 0, 0)]
        member.clean_shutdown("")  # CleanShutdown arrived on the worker's external channel
        await init.ended.wait()
        await node.ended.wait()
        assert (init.code, node.code) == (0, 0)
        assert init.verbs().index("stop_sources") < init.verbs().index("quiet_links")
        assert ("close", True) in init.asked and ("close", True) in node.asked
        assert role.drain.poll_round >= 4

    asyncio.run(scenario())
    out = capsys.readouterr().out
    assert out.count("Connections: Finished shutdown procedure.") == 2


def test_a_shutdown_that_cannot_quiesce_aborts_everyone_at_the_deadline(monkeypatch, capsys):
    monkeypatch.setattr(shutdown, "DRAIN_DEADLINE_S", 0.3)

    async def scenario():
        init, role, [(node, _)] = await form()
        init.rounds = [(1, 0, 1)]  # one record never acknowledged
        role.clean_shutdown("")
        await init.ended.wait()
        await node.ended.wait()
        assert (init.code, node.code) == (1, 1)
        assert ("close", True) not in init.asked + node.asked  # recovery files are kept

    asyncio.run(scenario())
    err = capsys.readouterr().err
    assert err.count("ERROR: clean shutdown could not drain: nothing") == 2


def test_rotate_log_requests_reach_the_named_worker(capsys):
    async def scenario():
        init, role, [(node, member)] = await form()
        role.rotate_log("worker-2")
        await until(lambda: "rotate_log" in node.verbs())
        member.rotate_log("initializer")
        await until(lambda: "rotate_log" in init.verbs())
        role.rotate_log("worker-9")

    asyncio.run(scenario())
    assert "WARNING: RotateLog requested for unknown worker 'worker-9'" in capsys.readouterr().err


# -- the pure parts --------------------------------------------------------------------------


def test_membership_keeps_join_order_and_takes_a_lost_member_back():
    members = Membership(3, PLAN)

    def hello(name: str) -> control.Hello:
        return control.Hello(name, ("ignored", 1), ("ignored", 2), tuple(PLAN))

    a, b = object(), object()
    assert members.admit(hello("w3"), "10.0.0.3", a) == ("", False, False)
    assert members.admit(hello("w2"), "10.0.0.2", b) == ("", False, False)
    assert members.names == ["initializer", "w3", "w2"] and members.complete
    assert members.members["w3"].control == ("10.0.0.3", 1)  # host from the connection
    assert members.lost(a) == "w3" and [m.name for m in members.others()] == ["w2"]
    assert members.admit(hello("w3"), "10.0.0.4", object()) == ("", True, False)
    assert members.names == ["initializer", "w3", "w2"]
    assert members.admit(hello("initializer"), "h", object()).refused


def test_membership_names_the_first_fingerprint_line_that_differs():
    members = Membership(2, PLAN)
    assert members.mismatch(PLAN) == ""
    assert members.mismatch(PLAN[:2]) == (
        "its application differs from the initializer's: '' vs 'resilience=False'"
    )
    assert members.mismatch([*PLAN, "more"]) == "its application differs from the initializer's"


def test_quiescence_needs_two_equal_complete_rounds_with_nothing_unacknowledged():
    q = Quiescence()
    row = {"sent": 10, "applied": 10, "backlog": 0}
    assert not q.round([row], complete=True)  # the first round has nothing to compare with
    assert q.round([row], complete=True)
    q = Quiescence()
    assert not q.round([row], complete=True)
    assert not q.round([row], complete=False)  # a missing answer starts over
    assert not q.round([row], complete=True)
    assert q.round([row], complete=True)
    q = Quiescence()
    busy = {"sent": 10, "applied": 9, "backlog": 1}
    assert not q.round([busy], True) and not q.round([busy], True)
    moved = {"sent": 11, "applied": 11, "backlog": 0}
    assert not q.round([row], True) and not q.round([moved], True)


def test_the_process_offers_every_verb_the_control_plane_may_use(tmp_path):
    verbs = {name for name in dir(Node) if not name.startswith("_")} | set(Node.__annotations__)
    assert {"listen", "build", "connect", "finish", "recovered"} <= verbs
    config = parse_runner_args(["machida", "--application-module", "sequence_window", "--in",
        "127.0.0.1:1", "--out", "127.0.0.1:2", "--metrics", "127.0.0.1:3", "--control",
        "127.0.0.1:4", "--name", "worker-2", "--resilience-dir", str(tmp_path)])  # fmt: skip
    process = Process(config, *load_plan("sequence_window", list(config.app_args)), b"s" * 32)
    assert sorted(verbs - set(dir(process))) == []
    assert sorted(verbs - set(dir(FakeNode("x")))) == []


@pytest.mark.parametrize(
    ("message", "why"),
    [({"type": "topology_please"}, "unknown control message type 'topology_please'"),
     ({"type": "finish"}, "unexpected message type 'finish'"),
     ({"type": "hello", "name": "w", "plan": PLAN}, "malformed 'hello' message: no 'control'"),
     ({"type": "hello", "name": "w", "plan": PLAN, "control": 5, "data": [1, 2]},
      "malformed 'hello' message: 'control' is 5"),
     ({"type": "hello", "name": "w", "plan": PLAN, "control": ["h", True], "data": ["h", 2]},
      "malformed 'hello' message: 'control' is ['h', True]")],
)  # fmt: skip
def test_a_control_message_the_initializer_cannot_take_closes_its_connection(message, why, capsys):
    async def scenario():
        LISTENING.clear()
        init = FakeNode("initializer")
        role = Initializer(init, 2, KEYS)
        await role.start()
        end = pipe(ControlChannel(Silent()), ControlChannel(role), ("10.0.0.7", 4000),
                   INITIALIZER_AT)  # fmt: skip
        end.write(encode_frame(json.dumps(message).encode()))
        await until(lambda: end.closed)
        assert role.membership.names == ["initializer"]

    asyncio.run(scenario())
    assert f"ERROR: control connection with 10.0.0.7:4000: {why}" in capsys.readouterr().err


def test_a_bug_in_a_handler_is_not_taken_for_a_malformed_message(monkeypatch):
    """The codec checked the message; an exception from the handler is the runner's own bug:
    it reaches the event loop with its traceback instead of closing the peer's connection."""

    def broken(self, conn, msg):
        raise KeyError("a bug")

    monkeypatch.setitem(Initializer.HANDLERS, control.Hello, broken)
    failures: list[BaseException] = []

    async def scenario():
        LISTENING.clear()
        asyncio.get_running_loop().set_exception_handler(
            lambda loop, context: failures.append(context["exception"])
        )
        role = Initializer(FakeNode("initializer"), 2, KEYS)
        await role.start()
        end = pipe(ControlChannel(Silent()), ControlChannel(role), ("10.0.0.7", 4000),
                   INITIALIZER_AT)  # fmt: skip
        hello = control.Hello("w", ("h", 1), ("h", 2), tuple(PLAN))
        end.write(control.encode(hello))
        await until(lambda: failures)
        assert not end.closed

    asyncio.run(scenario())
    assert [repr(err) for err in failures] == ["KeyError('a bug')"]
