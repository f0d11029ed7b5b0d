"""Keys moving between data planes joined in memory, frame by frame, in random orders.

Three workers' data planes (the initializer and two others that join and leave)
run an application with six keys over a :class:`machida.testing.MemoryNetwork`.
A Hypothesis state machine interleaves everything a cluster may see: source
reads on the initializer, each frame of each connection delivered (each
connection in order, the connections in any order), acknowledgements lost,
connections dropped and made again, and the steps of a grow or shrink as the
initializer runs them: stop reading the source, drain, then each worker's
change of placement at any moment between deliveries, then resume once every
handover is acknowledged. After every step: each key has exactly one owner in
the placement, and no two workers both hold a key's state once it has been
handed over; at the end every key's windows follow its values in order, each
exactly once, with no window restarting from zeroes.
"""

from __future__ import annotations

import re
import struct

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from machida.app.loader import load_plan, serializers
from machida.runtime.dataplane import DataPlane
from machida.runtime.flow import FlowControl
from machida.testing import DEFAULT_ARGS, MemoryNetwork

KEYS = 6
APP = """
import struct, wallaroo

class Decoder(object):
    def header_length(self):
        return 4
    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]
    def decode(self, bs):
        return struct.unpack(">Q", bs)[0]

class ByResidue(object):
    def partition(self, v):
        return v % {keys}

class Window(object):
    def __init__(self):
        self.values = [0, 0, 0, 0]

class Observe(object):
    def compute(self, v, window):
        window.values = window.values[1:] + [v]
        return (list(window.values), True)

class Builder(object):
    def build(self):
        return Window()

class Encoder(object):
    def encode(self, values):
        return ("[%s]" % ",".join(str(v) for v in values)).encode()

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Six windows")
    ab.new_pipeline("Values", wallaroo.TCPSourceConfig("h", "1", Decoder()))
    ab.to_state_partition(Observe(), Builder(), "windows", ByResidue(), list(range({keys})))
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", Encoder()))
    return ab.build()
"""
OTHERS = ["w2", "w3"]


def framed(values) -> bytes:
    return b"".join(struct.pack(">IQ", 8, v) for v in values)


class Migrations(RuleBasedStateMachine):
    """The initializer and up to two other workers, and the changes between them."""

    module = plan = None  # the application, loaded once by the test

    def __init__(self) -> None:
        super().__init__()
        self.network = MemoryNetwork()
        self.out: list[bytes] = []
        self.placement = self.plan.placement(["initializer"])
        self.start("initializer")
        self.source = self.network.planes["initializer"].open_source(0, "test")
        self.sent = 0
        self.target = None  # the placement a change is going to
        self.changed: set[str] = set()  # the workers that have applied it

    def start(self, name: str) -> DataPlane:
        write = self.network.writer(name)
        plane = DataPlane(self.plan, name, serializers(self.module), FlowControl(),
                          lambda p, data: self.out.append(data), write)  # fmt: skip
        plane.build(self.placement)
        self.network.add(plane)
        for other in self.network.planes:
            if other != name:
                self.network.connect(name, other)
                self.network.connect(other, name)
        return plane

    @property
    def planes(self) -> dict[str, DataPlane]:
        return self.network.planes

    # -- the cluster running ----------------------------------------------------------------

    @precondition(lambda self: self.target is None)
    @rule(count=st.integers(1, 30))
    def send(self, count: int) -> None:
        values = range(self.sent + 1, self.sent + count + 1)
        assert self.planes["initializer"].source_read(self.source, framed(values))
        self.sent += count

    @precondition(lambda self: self.network.wire)
    @rule(pick=st.integers(0, 10), frames=st.integers(1, 3), ack=st.booleans())
    def deliver(self, pick: int, frames: int, ack: bool) -> None:
        links = self.network.links()
        self.network.deliver(ack=ack, frames=frames, link=links[pick % len(links)])

    @precondition(lambda self: len(self.planes) > 1)
    @rule(pick=st.integers(0, 10))
    def reconnect(self, pick: int) -> None:
        """A connection drops and is made again: what was on it is lost, then resent."""
        names = sorted(self.planes)
        links = [(a, b) for a in names for b in names if a != b]
        self.network.connect(*links[pick % len(links)])

    # -- a change of placement, as the initializer runs it ---------------------------------

    @precondition(lambda self: self.target is None)
    @rule(workers=st.sets(st.sampled_from(OTHERS)))
    def begin_change(self, workers: set[str]) -> None:
        """Joiners start (owning nothing yet); then the cluster drains, its source held."""
        members = ["initializer", *sorted(workers)]
        if members == list(self.placement.workers):
            return
        for name in members:
            if name not in self.planes:
                self.start(name)
        self.drain()
        self.target = self.placement.rebalanced(members)
        self.changed = set()

    def drain(self) -> None:
        """Until nothing is in flight: every frame delivered and acknowledged."""
        while any(plane.counts()["backlog"] for plane in self.planes.values()):
            for link in [(a, b) for a in self.planes for b in self.planes if a != b]:
                self.network.connect(*link)  # acknowledgements lost before are sent again
            self.network.deliver()

    @precondition(lambda self: self.target is not None)
    @rule(pick=st.integers(0, 10))
    def apply_change(self, pick: int) -> None:
        """One more worker routes by the new placement and hands over what it gave up."""
        waiting = sorted(set(self.planes) - self.changed)
        if waiting:
            name = waiting[pick % len(waiting)]
            self.planes[name].change_placement(self.target)
            self.changed.add(name)

    @precondition(lambda self: self.target is not None and set(self.planes) == self.changed)
    @rule()
    def finish_change(self) -> None:
        """Every handover acknowledged: record, resume; the leaving workers are gone."""
        while any(plane.handing_over for plane in self.planes.values()):
            self.drain()
        target, self.target = self.target, None
        for name in [n for n in self.planes if n not in target.workers]:
            assert not any(self.planes[name].states.values()), f"{name} left holding keys"
            self.network.remove(name)
            for plane in self.planes.values():
                plane.forget(name)
        self.placement = target
        for plane in self.planes.values():
            assert plane.build_missing() == []  # every state arrived: none is built anew

    # -- what must hold ---------------------------------------------------------------------

    @invariant()
    def every_key_has_one_owner_and_at_most_one_holder_after_its_handover(self) -> None:
        for placement in filter(None, (self.placement, self.target)):
            owners = placement.owners_of("windows")
            assert len(owners) == KEYS and set(owners) <= set(placement.workers)
        for key in range(KEYS):
            holders = [n for n, p in self.planes.items() if key in p.states.get("windows", {})]
            assert len(holders) <= 1, f"key {key} is held by {holders}"

    def teardown(self) -> None:
        if self.target is not None:
            for name in set(self.planes) - self.changed:
                self.planes[name].change_placement(self.target)
            self.changed = set(self.planes)
            self.finish_change()
        self.drain()
        text = b"".join(self.out).decode()
        windows = [[int(v) for v in w.split(",")] for w in re.findall(r"\[([\d,]+)\]", text)]
        for key in range(KEYS):
            values = list(range(key or KEYS, self.sent + 1, KEYS))
            expected = [[0, 0, 0, 0, *values[: i + 1]][-4:] for i in range(len(values))]
            assert [w for w in windows if w[-1] % KEYS == key] == expected, f"key {key}"


@pytest.fixture
def migrations(make_app):
    Migrations.module, Migrations.plan = load_plan(make_app(APP.format(keys=KEYS)),
                                                   list(DEFAULT_ARGS))  # fmt: skip
    return Migrations


def test_any_interleaving_of_data_acks_reconnections_and_changes_keeps_each_key_in_order(
    migrations,
):
    run_state_machine_as_test(
        migrations, settings=settings(max_examples=150, stateful_step_count=40, deadline=None)
    )
