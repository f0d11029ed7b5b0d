"""Two data planes joined by bytes in memory (machida/runtime/dataplane.py), with no sockets.

The initializer's and worker-2's planes run sequence_window (and word_lengths,
whose messages cross both ways as serialised strings), joined by a
:class:`machida.testing.MemoryNetwork`. Every frame one plane writes for the
other waits on the network's wire until the test delivers it, loses it, or
reconnects: so forwarding, batching, acknowledgements, replay after a
reconnection, de-duplication after a restart and the water marks are all
checked on the real code, byte for byte.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.app.loader import load_plan, serializers
from machida.runtime.dataplane import SOURCE_SLICE, DataPlane
from machida.runtime.flow import LINK_HIGH_WATER, FlowControl
from machida.testing import DEFAULT_ARGS, MemoryNetwork, run
from machida.wire.boundary import (
    COUNTERS,
    BatchEvent,
    BoundaryDecoder,
    IncomingBoundary,
    encode_batch,
    encode_counters,
)

WORKERS = ["initializer", "worker-2"]
FRAME = struct.Struct(">IQ")
STATE_STEP = 1  # sequence_window: the state partition follows one stateless step


def framed(values) -> bytes:
    return b"".join(FRAME.pack(8, v) for v in values)


class Pair:
    """The initializer and worker-2 of one application, joined by a memory network."""

    def __init__(self, app: str = "sequence_window", exactly_once: bool = False) -> None:
        self.exactly_once = exactly_once
        self.module, self.plan = load_plan(app, list(DEFAULT_ARGS))
        self.sink: dict[str, list[bytes]] = {name: [] for name in WORKERS}
        self.network = MemoryNetwork()
        self.planes = self.network.planes
        for name in WORKERS:
            self.start(name)
        self.source = self.planes["initializer"].open_source(0, "test sender")
        self.network.connect_all()

    @property
    def wire(self):
        return self.network.wire

    def start(self, name: str, incarnation: int | None = None) -> DataPlane:
        def write_sink(p: int, data: bytes) -> None:
            self.sink[name].append(data)

        plane = DataPlane(self.plan, name, serializers(self.module), FlowControl(), write_sink,
                          self.network.writer(name), incarnation=incarnation,
                          exactly_once=self.exactly_once)  # fmt: skip
        plane.build(self.plan.placement(WORKERS))
        return self.network.add(plane)

    def connect(self, src: str, dst: str) -> None:
        self.network.connect(src, dst)

    def deliver(self, ack: bool = True) -> None:
        self.network.deliver(ack=ack)

    def send(self, data: bytes) -> None:
        """One source read on the initializer."""
        assert self.planes["initializer"].source_read(self.source, data)

    def windows(self, name: str) -> list[list[int]]:
        text = b"".join(self.sink[name]).decode("ascii", "replace")
        return [[int(v) for v in w.split(",")] for w in re.findall(r"\[([\d,]+)\]", text)]

    def batches(self) -> list[tuple[int, list]]:
        """The batches on the wire to worker-2: (first_seq, runs)."""
        out = []
        for src, dst, frame in self.wire:
            if (src, dst) == ("initializer", "worker-2"):
                out += [
                    tuple(e) for e in BoundaryDecoder().feed(frame) if isinstance(e, BatchEvent)
                ]
        return out


def series(values) -> list[list[int]]:
    """sequence_window's windows for one key, fed ``values`` in order."""
    window, out = [0, 0, 0, 0], []
    for v in values:
        window = [*window[1:], v]
        out.append(window)
    return out


def expected(count: int, parity: int) -> list[list[int]]:
    """The in-process driver's windows of one parity for the values 1..count (a multiple of 12
    brings its next two values early: sequence_window's one-to-many step)."""
    out = run("sequence_window", range(1, count + 1), workers=2)
    windows = [[int(v) for v in data[5:-1].split(b",")] for data in out]
    return [w for w in windows if w[-1] % 2 == parity]


def test_a_read_forwards_one_batch_of_raw_ints_that_is_applied_and_acknowledged():
    pair = Pair()
    initializer, worker = pair.planes["initializer"], pair.planes["worker-2"]
    pair.send(framed(range(1, 11)))
    assert pair.windows("initializer") == series([2, 4, 6, 8, 10])
    [(first, runs)] = pair.batches()
    assert first == 1
    assert [(run[2], run[3], run[4]) for run in runs] == [(1, True, [1, 3, 5, 7, 9])]
    assert initializer.counts() == {"sent": 5, "applied": 0, "backlog": 5}
    pair.deliver()
    assert pair.windows("worker-2") == series([1, 3, 5, 7, 9])
    assert worker.counts()["applied"] == 5
    assert initializer.counts() == {"sent": 5, "applied": 0, "backlog": 0}
    assert initializer.pstats[0].messages_forwarded == 5
    assert worker.pstats[0].messages_arrived == 5


def test_a_large_read_is_carried_through_in_slices_each_flushed():
    pair = Pair()
    pair.send(framed(range(1, 5001)))
    sizes = [sum(len(run[4]) for run in runs) for _, runs in pair.batches()]
    slices = -(-5000 // SOURCE_SLICE)
    assert len(sizes) == slices and sum(sizes) == 2500
    assert len(pair.sink["initializer"]) == slices  # one sink write per slice too
    pair.deliver()
    assert pair.windows("worker-2") == series(range(1, 5001, 2))


def test_what_a_lost_connection_carried_is_replayed_on_the_next_one():
    pair = Pair()
    pair.send(framed(range(1, 21)))
    pair.connect("initializer", "worker-2")  # the batch never arrived
    pair.send(framed(range(21, 31)))
    pair.deliver()
    assert pair.windows("worker-2") == series(range(1, 31, 2))
    assert pair.planes["initializer"].counts()["backlog"] == 0


def test_a_lost_acknowledgement_means_a_replay_that_is_skipped_not_applied_twice():
    pair = Pair()
    pair.send(framed(range(1, 21)))
    pair.deliver(ack=False)
    assert pair.planes["initializer"].counts()["backlog"] == 10
    pair.connect("initializer", "worker-2")
    pair.deliver()
    assert pair.windows("worker-2") == series(range(1, 21, 2))  # each window once
    assert pair.planes["worker-2"].counts()["applied"] == 10
    assert pair.planes["initializer"].counts()["backlog"] == 0


def test_a_restarted_receiver_skips_what_its_log_says_it_applied():
    pair = Pair()
    pair.send(framed(range(1, 21)))
    pair.deliver(ack=False)  # applied, logged, but the acknowledgement is lost in the crash
    logged = pair.planes["worker-2"].origins()
    pair.sink["worker-2"].clear()
    restarted = pair.start("worker-2")
    restarted.restore_origins(logged)  # what resilience does from the event log
    pair.connect("initializer", "worker-2")
    pair.deliver()
    assert restarted.counts()["applied"] == 0 and pair.windows("worker-2") == []
    pair.send(framed(range(21, 24)))
    pair.deliver()
    assert restarted.counts()["applied"] == 2
    assert pair.planes["initializer"].counts()["backlog"] == 0


def test_a_restarted_sender_is_a_new_incarnation_whose_records_all_count():
    pair = Pair()
    pair.send(framed(range(1, 11)))
    pair.deliver()
    old = pair.planes["initializer"].incarnation
    pair.start("initializer", incarnation=old + 1)
    pair.source = pair.planes["initializer"].open_source(0, "test sender")
    pair.connect("initializer", "worker-2")
    pair.send(framed(range(11, 21)))  # numbered from 1 again by the new incarnation
    pair.deliver()
    assert pair.planes["worker-2"].counts()["applied"] == 10
    assert [w[-1] for w in pair.windows("worker-2")] == list(range(1, 21, 2))


def test_a_link_holds_the_inputs_at_its_high_water_mark_until_acknowledged():
    pair = Pair()
    flow = pair.planes["initializer"].flow
    flow.open_sources()
    pair.send(framed(range(1, 2 * LINK_HIGH_WATER - 1)))  # one odd value short of the mark
    assert not flow.paused
    pair.send(framed([2 * LINK_HIGH_WATER - 1]))
    assert flow.reasons == {"link:worker-2"} and not flow.reading_sources
    pair.deliver()
    assert not flow.paused and flow.reading_sources


def test_messages_that_are_not_ints_cross_both_ways_serialised(test_apps):
    pair = Pair("word_lengths")
    data = b"".join(struct.pack(">I", len(line)) + line for line in [b"apple banana", b"cherry"])
    pair.send(data)
    pair.deliver()
    driver = run("word_lengths", ["apple banana", "cherry"], workers=2)
    got = [line.split(b" #") for line in b"".join(pair.sink["initializer"]).splitlines()]
    want = [line.split(b" #") for line in b"".join(driver).splitlines()]
    # the same totals; the output counter numbers them in arrival order, which differs
    assert sorted(t for t, _ in got) == sorted(t for t, _ in want) == [b"a:5", b"b:6", b"c:6"]
    assert sorted(int(n) for _, n in got) == [1, 2, 3]
    assert pair.sink["worker-2"] == []  # worker-2 owns no to_stateful state: it emits nothing
    # banana crossed to worker-2 and its total came back to the initializer's to_stateful step
    assert pair.planes["worker-2"].counts()["sent"] >= 1


def test_a_corrupt_frame_is_reported_after_the_batches_before_it_are_applied():
    pair = Pair()
    pair.send(framed([1, 3]))
    frames = [w[2] for w in pair.wire if w[:2] == ("initializer", "worker-2")]
    incoming = IncomingBoundary()
    error = pair.planes["worker-2"].boundary_read(incoming, b"".join(frames) + b"\0\0\0\1Z")
    assert error is not None and "unknown data frame kind" in str(error)
    assert pair.windows("worker-2") == series([1, 3])


def test_a_source_read_with_a_broken_frame_says_the_connection_must_close(capsys):
    pair = Pair()
    source = pair.planes["initializer"].open_source(0, "a bad client")
    ok = pair.planes["initializer"].source_read(source, framed([2]) + b"\xff\xff\xff\xff")
    assert not ok and pair.windows("initializer") == series([2])
    assert "a bad client" in capsys.readouterr().err


STEPS = st.lists(
    st.one_of(
        st.tuples(st.just("send"), st.integers(1, 40)),
        st.tuples(st.just("deliver"), st.booleans()),
        st.tuples(st.just("reconnect"), st.none()),
    ),
    max_size=25,
)


@settings(max_examples=60, deadline=None)
@given(STEPS)
def test_any_mix_of_losses_and_replays_delivers_every_window_exactly_once(steps):
    pair = Pair()
    sent = 0
    for name, arg in steps:
        if name == "send":
            pair.send(framed(range(sent + 1, sent + arg + 1)))
            sent += arg
        elif name == "deliver":
            pair.deliver(ack=arg)
        else:
            pair.connect("initializer", "worker-2")
    pair.connect("initializer", "worker-2")
    pair.deliver()
    assert pair.windows("initializer") == expected(sent, 0)
    assert pair.windows("worker-2") == expected(sent, 1)
    assert pair.planes["initializer"].counts()["backlog"] == 0


def test_a_batch_that_jumps_ahead_is_refused_and_nothing_of_it_applied():
    pair = Pair()
    pair.send(framed([1, 3]))
    pair.deliver()
    forged = encode_batch(2**62, [[(0, STATE_STEP, 1), True, [99]]])
    incoming = pair.network.incoming[("initializer", "worker-2")]
    error = pair.planes["worker-2"].boundary_read(incoming, forged)
    assert "starts at record 4611686018427387904, but 3 was next" in str(error)
    pair.send(framed([5]))
    pair.connect("initializer", "worker-2")  # the refused link was closed; the real one redials
    pair.deliver()
    assert [w[-1] for w in pair.windows("worker-2")] == [1, 3, 5]


@pytest.mark.parametrize(
    ("route", "why"),
    [((0, STATE_STEP, 0), "key index 0, which this worker does not own"),
     ((0, STATE_STEP, 7), "key index 7, which this worker does not own"),
     ((3, 1, 1), "pipeline 3, step 1, key index 1")],
)  # fmt: skip
def test_a_batch_for_a_route_this_worker_does_not_own_is_refused(route, why, capsys):
    pair = Pair()
    pair.deliver()
    incoming = pair.network.incoming[("initializer", "worker-2")]
    error = pair.planes["worker-2"].boundary_read(incoming, encode_batch(1, [[route, True, [2]]]))
    assert why in str(error)
    assert pair.windows("worker-2") == [] and pair.planes["worker-2"].counts()["applied"] == 0
    assert capsys.readouterr().err == ""  # not reported as a failure of the user's callbacks


@pytest.mark.parametrize(
    ("exactly_once", "counters", "why"),
    [(False, encode_counters({0: (1, 5)}), "runs without --exactly-once"),
     (True, b"x", "a counters record of 1 bytes"),
     (True, encode_counters({9: (1, 5)}), "pipeline 9, which this application does not have")],
    ids=["plain worker", "malformed", "unknown pipeline"],
)  # fmt: skip
def test_output_numbering_a_worker_cannot_take_is_refused(exactly_once, counters, why, capsys):
    """Kind 3 records (a moving key's exactly-once output numbering) are checked with the rest
    of the batch, before anything of it is applied."""
    pair = Pair(exactly_once=exactly_once)
    pair.deliver()
    incoming = pair.network.incoming[("initializer", "worker-2")]
    runs = [[(0, STATE_STEP, 1), True, [2]], [(0, STATE_STEP, 1), COUNTERS, [counters]]]
    error = pair.planes["worker-2"].boundary_read(incoming, encode_batch(1, runs))
    assert why in str(error)
    assert pair.windows("worker-2") == [] and pair.planes["worker-2"].counts()["applied"] == 0
    assert capsys.readouterr().err == ""


def test_a_replay_of_records_applied_before_a_key_moved_away_is_skipped_not_refused():
    """Records applied for a key, whose acknowledgement was lost, then the key handed over:
    the sender's replay is skipped as already applied, not refused as not owned here."""
    pair = Pair()
    pair.send(framed(range(1, 11)))
    pair.deliver(ack=False)  # worker-2 applied key 1's records; the ack is lost
    assert pair.planes["initializer"].counts()["backlog"] == 5
    moved = pair.planes["initializer"].topology.placement.rebalanced(["initializer"])
    assert pair.planes["worker-2"].change_placement(moved) == [("Sequence Window", 1,
                                                                 "initializer")]  # fmt: skip
    pair.connect("initializer", "worker-2")  # the replay of the five records
    pair.deliver()
    pair.planes["initializer"].change_placement(moved)
    pair.deliver()
    assert not pair.planes["worker-2"].handing_over
    assert pair.planes["initializer"].states["Sequence Window"][1].window == [3, 5, 7, 9]
