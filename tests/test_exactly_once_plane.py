"""Exactly-once output in the data plane, with no sockets.

Two depths. A Hypothesis state machine extends the autoscale one
(``test_migration``): the planes also speak the exactly-once sink protocol
with one receiver (its holdings, :class:`wallaroo_tools.ledger.Holdings`), and
the interleavings add each sink frame and acknowledgement delivered at any
moment, sink connections dropped and made again, and the receiver's commits;
at the end the receiver has taken every key's windows once each, in order,
whichever workers the keys moved between. Then worker-2 as ``machida`` makes
it, plane and event log on real files, against the receiver's intake and
ledger on real files: a crash of either, or both, at each step of the
handshake, and FILE holds each window once.
"""

from __future__ import annotations

import struct
from collections import deque

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule, run_state_machine_as_test
from test_migration import APP, KEYS, Migrations
from test_resilience import OWNED, Worker2

from machida.app.loader import load_plan, serializers
from machida.runtime.dataplane import DataPlane
from machida.runtime.flow import FlowControl
from machida.testing import DEFAULT_ARGS
from machida.wire import exactly_once as protocol
from machida.wire.exactly_once import NO_KEY, SinkDecoder, SinkHello, SinkOutputs
from wallaroo_tools.exactly_once import Intake
from wallaroo_tools.layouts import records
from wallaroo_tools.ledger import Holdings, Ledger


class ExactlyOnceMigrations(Migrations):
    """The autoscale machine with exactly-once output to one receiver."""

    def __init__(self) -> None:
        self.to_receiver: deque[tuple[str, bytes]] = deque()  # (worker, frame)
        self.to_worker: deque[tuple[str, bytes]] = deque()
        self.holdings = Holdings()
        self.taken: list[bytes] = []  # the receiver's windows, in the order it took them
        super().__init__()

    def start(self, name: str) -> DataPlane:
        write = self.network.writer(name)
        plane = DataPlane(self.plan, name, serializers(self.module), FlowControl(),
                          lambda p, frame: self.to_receiver.append((name, frame)), write,
                          exactly_once=True)  # fmt: skip
        plane.build(self.placement)
        self.network.add(plane)
        for other in self.network.planes:
            if other != name:
                self.network.connect(name, other)
                self.network.connect(other, name)
        self.connect_sink(name)
        return plane

    def connect_sink(self, name: str) -> None:
        """A (re)connection of ``name``'s sink: what was in flight on it is lost."""
        self.to_receiver = deque(w for w in self.to_receiver if w[0] != name)
        self.to_worker = deque(w for w in self.to_worker if w[0] != name)
        self.holdings.forget(name)
        (hello,) = SinkDecoder().feed(self.network.planes[name].sink_opened(0))
        assert isinstance(hello, SinkHello)
        self.to_worker.append((name, protocol.marks(self.holdings.answer(hello.streams))))

    def receive(self, name: str, frame: bytes) -> None:
        for event in SinkDecoder().feed(frame):
            assert isinstance(event, SinkOutputs)
            for run in event.runs:
                self.taken += self.holdings.fresh(name, run)  # a gap raises
                self.holdings.took(run)

    def answer(self, name: str, frame: bytes) -> None:
        resend, error = self.planes[name].sink_read(0, frame)
        assert error is None, error
        self.to_receiver += [(name, f) for f in resend]

    @precondition(lambda self: self.to_receiver or self.to_worker)
    @rule(pick=st.integers(0, 10), towards_receiver=st.booleans())
    def deliver_sink(self, pick: int, towards_receiver: bool) -> None:
        """The oldest frame of one sink connection, one way or the other."""
        wire = self.to_receiver if towards_receiver else self.to_worker
        names = sorted({name for name, _ in wire})
        if not names:
            return
        name = names[pick % len(names)]
        found = next(w for w in wire if w[0] == name)
        wire.remove(found)
        (self.receive if towards_receiver else self.answer)(*found)

    @rule()
    def commit(self) -> None:
        """The receiver makes what it took durable, then acknowledges."""
        self.holdings.committed(self.holdings.moved())
        for name in self.planes:
            acked = self.holdings.acks(name)
            if acked:
                self.to_worker.append((name, protocol.acks(acked)))

    @rule(pick=st.integers(0, 10))
    def reconnect_sink(self, pick: int) -> None:
        names = sorted(self.planes)
        self.connect_sink(names[pick % len(names)])

    def drain(self) -> None:
        """Until nothing is in flight: every frame delivered, committed and acknowledged."""
        while any(plane.counts()["backlog"] for plane in self.planes.values()):
            for link in [(a, b) for a in self.planes for b in self.planes if a != b]:
                self.network.connect(*link)  # acknowledgements lost before are sent again
            self.network.deliver()
            for name in self.planes:
                self.connect_sink(name)
            while self.to_receiver or self.to_worker:
                while self.to_worker:
                    self.answer(*self.to_worker.popleft())
                while self.to_receiver:
                    self.receive(*self.to_receiver.popleft())
                self.commit()

    def teardown(self) -> None:
        self.out = self.taken  # what the checks of every key read
        super().teardown()
        assert len(set(self.taken)) == len(self.taken)  # once each


@pytest.fixture
def exactly_once(make_app):
    ExactlyOnceMigrations.module, ExactlyOnceMigrations.plan = load_plan(
        make_app(APP.format(keys=KEYS)), list(DEFAULT_ARGS)
    )
    return ExactlyOnceMigrations


def test_moves_reconnections_and_any_interleaving_leave_each_window_taken_once_in_order(
    exactly_once,
):
    run_state_machine_as_test(
        exactly_once, settings=settings(max_examples=120, stateful_step_count=40, deadline=None)
    )


# -- a crash at each step of the handshake: worker-2 and the receiver on real files -----------


class Worker(Worker2):
    """worker-2 with ``--exactly-once``: its plane numbers and keeps its output."""

    def __init__(self, directory, *extra: str) -> None:
        super().__init__(directory, "--exactly-once", *extra)
        self.plane = DataPlane(self.plan, self.NAME, self.plane.serializers, self.flow,
                               lambda p, frame: self.sink.append(frame),
                               lambda peer, frame: self.sent.append(frame),
                               persist=self.resilience.persist, commit=self.commit,
                               exactly_once=True)  # fmt: skip

    def written(self) -> list[bytes]:
        frames, self.sink = self.sink, []
        return frames


class Connection:
    def __init__(self) -> None:
        self.peer, self.worker, self.named = "worker-2's sink", "worker-2", ""
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def abort(self) -> None:
        raise AssertionError("the receiver refused a connection")


class Receiver:
    """data_receiver --exactly-once without its sockets: intake and ledger on real files."""

    def __init__(self, directory) -> None:
        self.path = directory / "received.txt"
        self.ledger = Ledger(str(self.path))
        self.due: list = []
        self.intake = Intake(self.ledger, self.stamp, lambda frames: None, self.fail,
                             call_soon=self.due.append)  # fmt: skip

    @staticmethod
    def stamp(frames: list[bytes]) -> bytes:
        return b"".join(len(f).to_bytes(4, "big") + bytes(8) + f for f in frames)

    @staticmethod
    def fail(line: str) -> None:
        raise AssertionError(line)

    def connect(self, worker: Worker) -> Connection:
        """A (re)connection: the hello, the marks, and what the worker sends again."""
        conn = Connection()
        self.intake.connections.add(conn)
        (hello,) = SinkDecoder().feed(worker.plane.sink_opened(0))
        self.intake.hello(conn, hello)
        resend, error = worker.plane.sink_read(0, b"".join(conn.out))
        assert error is None and worker.plane.sink_ready(0)
        conn.out.clear()
        self.take(conn, resend)
        return conn

    def take(self, conn: Connection, frames: list[bytes]) -> None:
        for event in SinkDecoder().feed(b"".join(frames)):
            self.intake.outputs(conn, event.runs)

    def commit(self) -> None:
        for call in self.due:
            call()
        self.due.clear()

    def acknowledge(self, conn: Connection, worker: Worker) -> None:
        _, error = worker.plane.sink_read(0, b"".join(conn.out))
        assert error is None
        conn.out.clear()

    def crash(self) -> None:
        self.ledger.close()  # nothing more is committed

    def windows(self) -> list[bytes]:
        return [payload for _, payload in records(self.path.read_bytes(), "giles")]


def windows(*values: int) -> list[bytes]:
    """worker-2's windows after ``values``: ``[0,0,0,1]``, ``[0,0,1,3]``, ..."""
    ring, out = [0, 0, 0, 0], []
    for v in values:
        ring = [*ring[1:], v]
        out.append(("[" + ",".join(map(str, ring)) + "]").encode())
    return out


# The steps of value 3's window, in order: the worker logs it (its commit), writes it, the
# receiver takes it, commits, and its acknowledgement reaches the worker.
STEPS = ("the worker's commit", "the write", "the receiver took it", "the receiver's commit")
CRASHES = [("worker", 1), ("worker", 2), ("worker", 3), ("worker", 4), ("receiver", 3),
           ("receiver", 4), ("both", 1), ("both", 3), ("both", 4)]  # fmt: skip


@pytest.mark.parametrize(("who", "after"), CRASHES,
                         ids=[f"{who} after {STEPS[n - 1]}" for who, n in CRASHES])  # fmt: skip
def test_a_crash_at_each_step_of_the_handshake_leaves_each_window_in_file_once(
    tmp_path, who, after
):
    worker, receiver = Worker(tmp_path).join(), Receiver(tmp_path)
    conn = receiver.connect(worker)
    worker.deliver(1)
    receiver.take(conn, worker.written())
    receiver.commit()
    receiver.acknowledge(conn, worker)
    worker.deliver(3)  # the worker's commit, then its write (the test carries what it wrote)
    frames = worker.written() if after >= 2 else []
    if after >= 3:
        receiver.take(conn, frames)
    if after >= 4:
        receiver.commit()  # its acknowledgement is written, and lost with the crash
    if who in ("worker", "both"):
        worker.stop()
        worker = Worker(tmp_path).join()
        assert worker.recovering and worker.window() == [0, 0, 1, 3]
    if who in ("receiver", "both"):
        receiver.crash()
        receiver = Receiver(tmp_path)
    conn = receiver.connect(worker)  # the two ends meet again
    receiver.commit()
    receiver.acknowledge(conn, worker)
    assert worker.plane.counts()["backlog"] == 0  # everything is acknowledged
    worker.deliver(5)
    receiver.take(conn, worker.written())
    receiver.commit()
    receiver.acknowledge(conn, worker)
    assert receiver.windows() == windows(1, 3, 5)
    worker.stop()


def test_output_is_written_only_once_its_commit_is_durable(tmp_path):
    worker = Worker(tmp_path).join()
    receiver = Receiver(tmp_path)
    receiver.connect(worker)
    worker.resilience.log.file.close()  # the disk refuses: the commit raises
    with pytest.raises(ValueError):
        worker.deliver(1)
    assert worker.written() == []  # nothing left that a crash could take back


def test_a_restarted_worker_numbers_on_in_the_same_stream(tmp_path):
    worker, receiver = Worker(tmp_path).join(), Receiver(tmp_path)
    conn = receiver.connect(worker)
    worker.deliver(1)
    receiver.take(conn, worker.written())
    receiver.commit()
    (stream,) = receiver.intake.holdings.durable
    worker.stop()
    again = Worker(tmp_path).join()
    assert again.plane.stream_counters() == {(0, OWNED): (stream.epoch, 1)}
    receiver.acknowledge(receiver.connect(again), again)
    again.deliver(3)
    (event,) = SinkDecoder().feed(b"".join(again.written()))
    assert [(run.stream, run.first) for run in event.runs] == [(stream, 2)]
    again.stop()


STATELESS = """
import struct, wallaroo

class Decoder(object):
    def header_length(self):
        return 4
    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]
    def decode(self, bs):
        return struct.unpack(">Q", bs)[0]

class Double(object):
    def compute(self, v):
        return v * 2

class Encoder(object):
    def encode(self, v):
        text = str(v).encode()
        return struct.pack(">I", len(text)) + text

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Doubles")
    ab.new_pipeline("Values", wallaroo.TCPSourceConfig("h", "1", Decoder()))
    ab.to(Double)
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", Encoder()))
    return ab.build()
"""


def test_a_pipeline_without_a_state_step_numbers_its_output_in_one_stream(make_app):
    module, plan = load_plan(make_app(STATELESS), list(DEFAULT_ARGS))
    written: list[bytes] = []
    plane = DataPlane(plan, "initializer", serializers(module), FlowControl(),
                      lambda p, frame: written.append(frame), lambda peer, frame: None,
                      exactly_once=True)  # fmt: skip
    plane.build(plan.placement(["initializer"]))
    receiver = Holdings()
    (hello,) = SinkDecoder().feed(plane.sink_opened(0))
    plane.sink_read(0, protocol.marks(receiver.answer(hello.streams)))
    source = plane.open_source(0, "test")
    for values in ([1, 2, 3], [4]):
        plane.source_read(source, b"".join(struct.pack(">IQ", 8, v) for v in values))
    runs = [run for event in SinkDecoder().feed(b"".join(written)) for run in event.runs]
    assert [(run.stream.key, run.first, list(run.values)) for run in runs] == [
        (NO_KEY, 1, [b"\x00\x00\x00\x012", b"\x00\x00\x00\x014", b"\x00\x00\x00\x016"]),
        (NO_KEY, 4, [b"\x00\x00\x00\x018"]),
    ]
    assert len({run.stream for run in runs}) == 1
    assert plane.counts()["backlog"] == 4  # until the receiver acknowledges them
    plane.sink_read(0, protocol.acks({runs[0].stream: 4}))
    assert plane.counts()["backlog"] == 0
