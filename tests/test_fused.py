"""The loops of machida/app/fused.py against the chain of closures they stand in for.

For the common shape (a source, at most one stateless step, a state step, the
sink) a worker carries source payloads and arriving runs in one loop each.
Here the same application runs in two topologies, one with the loops and one
without (``fused=False``), on the same input: an application whose every
callback, chosen per value by Hypothesis, may return something good, return
something the API refuses, raise, or stop the process. Everything either
topology does must match: the sink's bytes, what it forwards to the other
worker, the states, the persist calls, the lines its callbacks print, their
counters, the step counts, and where a failure that propagates stops it; with
exactly-once output too, where each output goes with its key index.
"""

from __future__ import annotations

import io
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.app.callbacks import Callbacks
from machida.app.fused import shape_of
from machida.app.loader import prepare_sys_path
from machida.app.plan import build_plan
from machida.app.topology import LocalTopology
from machida.errors import UserCallbackError
from machida.metrics.stats import Stats

prepare_sys_path()
import wallaroo  # noqa: E402

U64 = struct.Struct(">Q")
WORKERS = ["initializer", "worker-2"]
KEYS = [0, 1, 2, 3]
STATE_POS = 1  # the state step follows the stateless step

# What each callback does with a value, by name; the test draws one per value it sees.
DECODE = ["ok", "ok", "ok", "raise", "fatal"]
STEP = ["one", "one", "two", "none", "empty", "raise", "notlist", "fatal"]
PARTITION = ["ok", "ok", "ok", "unknown", "raise", "unhashable", "float", "bool", "text"]
COMPUTE = ["ok", "ok", "ok", "none", "raise", "notuple", "short", "fatal"]
ENCODE = ["ok", "ok", "ok", "text", "bytearray", "empty", "none", "int", "nonascii", "raise"]


class Fatal(BaseException):
    """Neither an Exception nor SystemExit: the callbacks let it through untouched."""


def make_app(table: dict[str, list[str]], multi: bool, u64: bool, with_step: bool):
    """The application's action list; each callback does what ``table`` says for the value."""

    def what(name: str, value: object) -> str:
        outcomes = table[name]
        return outcomes[sum(map(ord, repr(value))) % len(outcomes)]

    def raising(name: str, outcome: str) -> None:
        if outcome == "raise":
            raise ValueError(f"{name} refuses")
        if outcome == "fatal":
            raise Fatal(name)

    class Decoder:
        def header_length(self):
            return 4

        def payload_length(self, bs):
            return struct.unpack(">I", bs)[0]

        def decode(self, bs):
            value = U64.unpack(bs)[0]
            raising("decode", what("decode", value))
            return value

    def step_result(value):
        outcome = what("step", value)
        raising("step", outcome)
        return {"one": [value], "two": [value, value + 1000], "none": None, "empty": [],
                "notlist": (value,)}[outcome]  # fmt: skip

    class Multi:
        def name(self):
            return "multi step"

        def compute_multi(self, data):
            return step_result(data)

    class One:
        def compute(self, data):
            result = step_result(data)
            return result[-1] if isinstance(result, list) and result else result

    class Partition:
        def partition(self, data):
            outcome = what("partition", data)
            raising("partition", outcome)
            return {"ok": data % len(KEYS), "unknown": 99, "unhashable": [data], "float": 1.0,
                    "bool": True, "text": "k"}[outcome]  # fmt: skip

    class Window:
        def __init__(self):
            self.seen = []

    class Builder:
        def build(self):
            return Window()

    class Observe:
        def name(self):
            return "observe"

        def compute(self, data, state):
            outcome = what("compute", data)
            raising("compute", outcome)
            state.seen.append(data)
            return {"ok": (list(state.seen[-4:]), data % 3 == 0), "none": (None, True),
                    "notuple": [data, True], "short": (data,)}[outcome]  # fmt: skip

    class Encoder:
        def encode(self, data):
            outcome = what("encode", tuple(data))
            raising("encode", outcome)
            text = ",".join(map(str, data))
            raw = text.encode()
            results = {"ok": raw, "text": text, "bytearray": bytearray(raw), "empty": b"",
                       "none": None, "int": 7, "nonascii": text + "\u00e9"}  # fmt: skip
            return results[outcome]

    ab = wallaroo.ApplicationBuilder("Fused")
    ab.new_pipeline("P", wallaroo.TCPSourceConfig("127.0.0.1", "0", Decoder()))
    if with_step:
        ab.to(Multi if multi else One)
    partition = ab.to_state_partition_u64 if u64 else ab.to_state_partition
    partition(Observe(), Builder(), "windows", Partition(), KEYS)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", Encoder()))
    return build_plan(ab.build(), "test_fused")


class Side:
    """One topology of worker ``initializer`` and everything it does."""

    def __init__(self, plan, fused: bool, errors: str, keyed: bool = False) -> None:
        self.stream = io.StringIO()
        self.callbacks = Callbacks("initializer", errors=errors, stream=self.stream)
        self.sink: list = []  # bytes; with keyed (exactly-once output) (key index, bytes)
        self.forwarded: dict[tuple, list] = {}
        self.persisted: list[tuple] = []
        self.stats = Stats("initializer")
        self.topology = LocalTopology(
            plan, "initializer", plan.placement(WORKERS), self.callbacks,
            sink_for=lambda p: self.sink.append, forward_to=self.forward_to,
            serializers=(repr, eval), persist=lambda *call: self.persisted.append(call),
            stats=self.stats, sink_keys=keyed, fused=fused,
        )  # fmt: skip
        self.stopped: str | None = None

    def forward_to(self, owner: str, route: tuple):
        return self.forwarded.setdefault((owner, route), []).append

    def run(self, action) -> None:
        if self.stopped is not None:
            return
        try:
            action()
        except (UserCallbackError, Fatal) as err:
            self.stopped = f"{type(err).__name__}: {err}"

    def seen(self) -> dict:
        return {
            "sink": self.sink,
            "forwarded": self.forwarded,
            "persisted": self.persisted,
            "states": {i: s.seen for i, s in self.topology.states["windows"].items()},
            "printed": _without_frames(self.stream.getvalue()),
            "counters": dict(self.callbacks.counters),
            "steps": {name: p.snapshot() for name, p in self.stats.pipelines.items()},
            "stopped": self.stopped,
        }


def _without_frames(text: str) -> list[str]:
    """The lines printed, but for a traceback's frames (the loop's are not the chain's)."""
    return [line for line in text.splitlines()
            if not line.startswith((" ", "Traceback (most recent call last)"))]  # fmt: skip


def tables():
    return st.fixed_dictionaries({
        name: st.lists(st.sampled_from(outcomes), min_size=1, max_size=6)
        for name, outcomes in (("decode", DECODE), ("step", STEP), ("partition", PARTITION),
                               ("compute", COMPUTE), ("encode", ENCODE))
    })  # fmt: skip


@settings(max_examples=150, deadline=None)
@given(
    table=tables(),
    multi=st.booleans(),
    u64=st.booleans(),
    with_step=st.booleans(),
    errors=st.sampled_from(["log", "raise"]),
    keyed=st.booleans(),
    slices=st.lists(st.lists(st.integers(0, 2**64 - 1), max_size=12), min_size=1, max_size=4),
)
def test_a_source_loop_does_what_the_chain_does(table, multi, u64, with_step, errors, keyed,
                                                slices):  # fmt: skip
    plan = make_app(table, multi, u64, with_step)
    assert shape_of(plan.pipelines[0]) is not None
    sides = [Side(plan, fused, errors, keyed) for fused in (True, False)]
    for side in sides:
        connection = side.topology.source_connection(0, "test peer")
        assert connection.one_loop == side.topology.fused
        for values in slices:
            payloads = [U64.pack(v) for v in values]
            side.run(lambda: connection.push_payloads(payloads))  # noqa: B023 (called at once)
    assert sides[0].seen() == sides[1].seen()


@settings(max_examples=100, deadline=None)
@given(
    table=tables(),
    errors=st.sampled_from(["log", "raise"]),
    keyed=st.booleans(),
    runs=st.lists(
        st.tuples(st.sampled_from([0, 2]), st.lists(st.integers(0, 10**6), max_size=12)),
        min_size=1, max_size=4,
    ),
)  # fmt: skip
def test_an_arriving_run_is_applied_as_the_chain_applies_it(table, errors, keyed, runs):
    plan = make_app(table, multi=True, u64=False, with_step=True)
    assert plan.placement(WORKERS).owned_by("initializer") == {"windows": [0, 2]}
    sides = [Side(plan, fused, errors, keyed) for fused in (True, False)]
    for side in sides:
        run = side.topology.arrival_run(0, STATE_POS)
        for key_index, values in runs:
            side.run(lambda: run(key_index, values))  # noqa: B023 (called at once)
    assert sides[0].seen() == sides[1].seen()


def test_a_key_missed_after_one_matched_in_an_earlier_read_is_reported_alike():
    """The first unknown key lists the key list only while no key has matched, whichever
    read (or connection) the match was in."""
    table = {name: ["ok"] for name in ("decode", "compute", "encode")}
    table.update(step=["one"], partition=["ok", "unknown"])  # 0 is a key, 1 is not
    plan = make_app(table, multi=True, u64=False, with_step=True)
    printed = []
    for fused in (True, False):
        side = Side(plan, fused, "log")
        side.topology.source_connection(0, "first").push_payloads([U64.pack(0)])
        side.topology.source_connection(0, "second").push_payloads([U64.pack(1)])
        printed.append(side.seen()["printed"])
    assert printed[0] == printed[1]
    assert "which is not in the key list" in printed[0][0]
    assert "No key has matched yet" not in printed[0][0]


def test_the_loops_follow_a_change_of_placement():
    """A key moved away is forwarded from then on, by the source loop as by the chain."""
    table = {name: ["ok"] for name in ("decode", "partition", "compute", "encode")}
    table["step"] = ["one"]
    plan = make_app(table, multi=True, u64=False, with_step=True)
    sides = [Side(plan, fused, "raise") for fused in (True, False)]
    for side in sides:
        connection = side.topology.source_connection(0, "test peer")
        connection.push_payloads([U64.pack(v) for v in range(8)])
        side.topology.apply_placement(plan.placement(WORKERS, state_off_initializer=True))
        for key_index in (0, 2):  # handed over to worker-2, which owns every key now
            side.topology.take_state("windows", key_index)
        connection.push_payloads([U64.pack(v) for v in range(8, 16)])
    first, second = sides[0].seen(), sides[1].seen()
    assert first == second
    assert ("worker-2", (0, STATE_POS, 0)) in first["forwarded"]
    assert first["forwarded"][("worker-2", (0, STATE_POS, 0))] == [8, 12]
    assert first["states"] == {}
    assert len(first["sink"]) == 4  # keys 0 and 2 of 0..7, before the change


@pytest.mark.parametrize(
    "change",
    ["no sink", "state step first of two", "compute_multi state", "no partition"],
)
def test_other_shapes_take_the_chain(change):
    class Step:
        def compute(self, data):
            return data

    class Part:
        def partition(self, data):
            return data % 2

    class Builder:
        def build(self):
            return []

    class Comp:
        def compute(self, data, state):
            return (data, True)

    class MultiComp:
        def compute_multi(self, data, state):
            return ([data], True)

    class Codec:
        def header_length(self):
            return 4

        def payload_length(self, bs):
            return struct.unpack(">I", bs)[0]

        def decode(self, bs):
            return U64.unpack(bs)[0]

        def encode(self, data):
            return b"%d" % data

    ab = wallaroo.ApplicationBuilder("Other")
    ab.new_pipeline("P", wallaroo.TCPSourceConfig("127.0.0.1", "0", Codec()))
    comp = MultiComp() if change == "compute_multi state" else Comp()
    if change == "no partition":
        ab.to_stateful(comp, Builder(), "s")
    else:
        ab.to_state_partition(comp, Builder(), "s", Part(), [0, 1])
    if change == "state step first of two":
        ab.to(Step)
    if change == "no sink":
        ab.done()
    else:
        ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "0", Codec()))
    plan = build_plan(ab.build(), "test_fused")
    assert shape_of(plan.pipelines[0]) is None
    topology = LocalTopology(plan, "initializer", plan.placement(WORKERS), Callbacks("w"),
                             sink_for=lambda p: [].append,
                             forward_to=lambda o, r: [].append)  # fmt: skip
    assert not topology.source_connection(0, "peer").one_loop
