"""One policy for every call into user code (machida/app/callbacks.py), pinned per callback.

Each kind of callback of an application (payload_length, decode, a stateless
compute and compute_multi, partition, a state computation's compute and
compute_multi, a state builder's build, encode, and the module's serialize and
deserialize) raises SystemExit or KeyboardInterrupt in turn, in the in-process
driver over two workers (so that messages cross, through serialize and
deserialize). A SystemExit is named on stderr and ends the run with its code,
as machida's did; a KeyboardInterrupt goes on untouched, and neither is counted
as a dropped message.
"""

from __future__ import annotations

import struct

import pytest

from machida.testing import Driver

APP = """
import pickle, struct, wallaroo

WHERE, EXC = {where!r}, {exc}
calls = []

def boom(where, v):
    if where == WHERE and v == 5:
        raise EXC

class Box(object):
    def __init__(self, v):
        self.v = v

class D(object):
    def header_length(self):
        return 4
    def payload_length(self, header):
        calls.append(header)
        boom("payload_length", len(calls))
        return struct.unpack(">I", header)[0]
    def decode(self, data):
        v = struct.unpack(">Q", data)[0]
        boom("decode", v)
        return v

class Multi(object):
    def compute_multi(self, v):
        boom("compute_multi", v)
        return [v]

class One(object):
    def compute(self, v):
        boom("compute", v)
        return Box(v)

class P(object):
    def partition(self, box):
        boom("partition", box.v)
        return box.v % 2

class O(object):
    def compute(self, box, state):
        boom("state compute", box.v)
        state.append(box.v)
        return (box.v, True)

class OM(object):
    def compute_multi(self, box, state):
        boom("state compute_multi", box.v)
        return ([box.v], True)

class B(object):
    def build(self):
        boom("build", 5)
        return []

class E(object):
    def encode(self, v):
        boom("encode", v)
        return b"%d\\n" % v

def serialize(o):
    if isinstance(o, Box):
        boom("serialize", o.v)
    return pickle.dumps(o)

def deserialize(data):
    o = pickle.loads(data)
    if isinstance(o, Box):
        boom("deserialize", o.v)
    return o

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Guarded")
    ab.new_pipeline("P", wallaroo.TCPSourceConfig("h", "1", D()))
    ab.to(Multi)
    ab.to(One)
    state = OM() if WHERE == "state compute_multi" else O()
    ab.to_state_partition(state, B(), "s", P(), [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", E()))
    return ab.build()
"""

# callback kind -> how the error line names it ({module} is the application module)
CALLBACKS = {
    "payload_length": "D.payload_length",
    "decode": "D.decode",
    "compute_multi": "Multi.compute_multi",
    "compute": "One.compute",
    "partition": "P.partition",
    "state compute": "O.compute",
    "state compute_multi": "OM.compute_multi",
    "build": "B.build",
    "encode": "E.encode",
    "serialize": "{module}.serialize",
    "deserialize": "{module}.deserialize",
}


def frames(values) -> bytes:
    return b"".join(struct.pack(">IQ", 8, v) for v in values)


def run(name: str) -> Driver:
    driver = Driver(name, workers=2, errors="log")
    driver.feed_bytes(frames(range(1, 9)))
    return driver


def test_the_app_runs_whole_when_nothing_raises(make_app):
    driver = run(make_app(APP.format(where="nowhere", exc="None")))
    assert sorted(o.value for o in driver.outputs) == list(range(1, 9))
    assert {o.worker for o in driver.outputs} == {"initializer", "worker1"}  # 5 crosses


@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_system_exit_from_any_callback_is_named_and_ends_the_run(make_app, capsys, kind):
    name = make_app(APP.format(where=kind, exc="SystemExit(3)"))
    with pytest.raises(SystemExit) as exit_:
        run(name)
    assert exit_.value.code == 3
    label = CALLBACKS[kind].format(module=name)
    assert f"ERROR: {label}() raised SystemExit(3); exiting\n" in capsys.readouterr().err


@pytest.mark.parametrize("kind", sorted(CALLBACKS))
def test_keyboard_interrupt_from_any_callback_goes_on_untouched(make_app, capsys, kind):
    name = make_app(APP.format(where=kind, exc="KeyboardInterrupt()"))
    with pytest.raises(KeyboardInterrupt):
        run(name)
    assert "ERROR" not in capsys.readouterr().err
