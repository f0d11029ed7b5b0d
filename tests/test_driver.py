"""The in-process driver: pipeline semantics over 1 and 2 workers, and the error policy."""

from __future__ import annotations

import random
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.app.callbacks import INVALID, RAISED, UNKNOWN_KEY
from machida.testing import Driver, UserCallbackError, run
from wallaroo_tools.validation import validate
from wallaroo_tools.validator import validate_bytes

FRAME = struct.Struct(">IQ")


def frames(values) -> bytes:
    return b"".join(FRAME.pack(8, v) for v in values)


def windows(outputs: list[bytes]) -> list[list[int]]:
    result = []
    for data in outputs:
        (length,) = struct.unpack(">I", data[:4])
        assert len(data) == 4 + length
        result.append([int(x) for x in data[4:].decode("ascii").strip("[]").split(",")])
    return result


def expected_windows(n: int) -> list[list[int]]:
    rings = {0: [0, 0, 0, 0], 1: [0, 0, 0, 0]}
    out = []
    for v in range(1, n + 1):
        ring = rings[v % 2]
        ring[:] = [*ring[1:], v]
        out.append(list(ring))
    return out


@pytest.mark.parametrize("workers", [1, 2])
def test_one_to_thousand_gives_every_window_in_order(workers):
    out = run("sequence_window", range(1, 1001), workers=workers)
    assert len(out) == 1000
    assert windows(out) == expected_windows(1000)
    assert out[0] == b"\x00\x00\x00\x09[0,0,0,1]"
    assert windows(out)[-2:] == [[993, 995, 997, 999], [994, 996, 998, 1000]]


@pytest.mark.parametrize("workers", [1, 2])
def test_driver_output_satisfies_every_validator_rule(workers):
    out = run("sequence_window", range(1, 1001), workers=workers)
    result = validate(enumerate(windows(out)), expected=1000, at_least_once=False)
    assert result.ok, result.message
    # written as a raw framed sink stream, the validator tool's reader accepts it too
    assert validate_bytes(b"".join(out), layout="framed", expected=1000).ok
    # and a run one short fails the final check: the rules can fail here
    short = validate(enumerate(windows(out[:-1])), expected=1000, at_least_once=False)
    assert not short.ok and short.message.startswith("Expected max test failed")


def test_runs_are_deterministic_and_worker_count_does_not_change_bytes():
    assert run("sequence_window", range(1, 300), workers=2) == run(
        "sequence_window", range(1, 300), workers=2
    )
    assert run("sequence_window", range(1, 300), workers=1) == run(
        "sequence_window", range(1, 300), workers=3
    )


def test_owners_and_outputs_per_worker():
    driver = Driver("sequence_window", workers=2)
    assert driver.owner("Sequence Window", 0) == "initializer"
    assert driver.owner("Sequence Window", 1) == "worker1"
    outs = driver.feed(range(1, 101))
    assert {o.worker for o in outs if o.value[-1] % 2 == 0} == {"initializer"}
    assert {o.worker for o in outs if o.value[-1] % 2 == 1} == {"worker1"}
    assert driver.state("Sequence Window", 1).get_window() == [93, 95, 97, 99]
    assert outs[0].value == [0, 0, 0, 1] and outs[0].data == b"\x00\x00\x00\x09[0,0,0,1]"


def test_the_state_crossing_workers_is_a_copy_of_the_message():
    # key 1 lives on worker1: the message object reaching it went through pickle
    driver = Driver("sequence_window", workers=2)
    driver.feed([1])
    assert driver.state("Sequence Window", 1).get_window() == [0, 0, 0, 1]
    assert driver.state("Sequence Window", 0).get_window() == [0, 0, 0, 0]


def test_three_workers_leave_the_third_without_keys():
    driver = Driver("sequence_window", workers=3, worker_names=["initializer", "a", "b"])
    outs = driver.feed(range(1, 50))
    assert {o.worker for o in outs} == {"initializer", "a"}


def test_twelve_values_give_fourteen_windows():
    out = windows(run("sequence_window", range(1, 13), workers=2))
    assert len(out) == 14
    assert out == expected_windows(14)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), max_size=12), st.integers(1, 2))
def test_feed_bytes_any_split_gives_the_same_outputs(cuts, workers):
    data = frames(range(1, 201))
    points = sorted({c * 12 % len(data) + (c % 11) for c in cuts} - {0})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)])]
    assert run("sequence_window", chunks, workers=workers, frames=True) == run(
        "sequence_window", range(1, 201), workers=workers
    )


def test_feed_bytes_byte_by_byte_and_partial_frame_at_close(capsys):
    driver = Driver("sequence_window", workers=2)
    data = frames([1, 2, 3])
    for i in range(len(data) - 5):
        driver.feed_bytes(data[i : i + 1])
    assert len(driver.outputs) == 2
    driver.close()
    err = capsys.readouterr().err
    assert "closed in the middle of a frame; 7 byte(s) discarded" in err


def test_second_app_through_the_driver(test_apps):
    lines = [b"apple avocado", b"", b"banana 9lives", b"art"]
    data = b"".join(struct.pack(">I", len(x)) + x for x in lines if x) + struct.pack(">I", 0)
    driver = Driver("word_lengths", workers=2, errors="log")
    outs = driver.feed_bytes(data)
    texts = [o.data.decode() for o in outs]
    assert texts == ["a:5 #1\n", "a:12 #2\n", "b:6 #3\n", "#:6 #4\n", "a:15 #5\n"]
    assert driver.owner("totals", "a") == "initializer"
    assert driver.owner("totals", "b") == "worker1"
    assert driver.owner("output count", 0) == "initializer"
    assert driver.state("totals", "b").total == 6
    assert driver.state("output count", 0).total == 5
    # the zero-length frame broke the framing: reported, and nothing after it is read
    assert driver.feed_bytes(struct.pack(">I", 3) + b"zed") == []


# -- the error policy ---------------------------------------------------------------------

FAULTY = """
import struct, wallaroo
from sequence_window import (Decoder, MaybeOneToMany, SequencePartitionFunction,
    ObserveNewValue, SequenceWindowStateBuilder, Encoder)

BAD = {bad!r}

class D(Decoder):
    def decode(self, bs):
        v = Decoder.decode(self, bs)
        if BAD.get("decode") == v: raise ValueError("bad decode %d" % v)
        return v

class M(MaybeOneToMany):
    def compute_multi(self, v):
        if BAD.get("multi") == v: return (v,)
        return MaybeOneToMany.compute_multi(self, v)

class P(SequencePartitionFunction):
    def partition(self, v):
        if BAD.get("partition") == v: raise IndexError("no partition for %d" % v)
        if BAD.get("key") == v: return 2
        if BAD.get("unhashable") == v: return [v]
        if BAD.get("exit") == v: raise SystemExit(3)
        return v % 2

class O(ObserveNewValue):
    def compute(self, v, state):
        if BAD.get("compute") == v: raise KeyError(v)
        if BAD.get("shape") == v: return [v]
        return ObserveNewValue.compute(self, v, state)

class E(Encoder):
    def encode(self, w):
        if BAD.get("encode") == w[-1]: return 42
        if BAD.get("encode_raise") == w[-1]: raise RuntimeError("no")
        return Encoder.encode(self, w)

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Faulty")
    ab.new_pipeline("Sequence Window", wallaroo.TCPSourceConfig("h", "1", D()))
    ab.to(M)
    ab.to_state_partition(O(), SequenceWindowStateBuilder(), "Sequence Window", P(), [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig("h", "2", E()))
    return ab.build()
"""


@pytest.mark.parametrize(
    ("bad", "dropped", "callback", "reason", "shown"),
    [
        ({"decode": 7}, 7, "D.decode", RAISED, "D.decode() raised ValueError: bad decode 7"),
        ({"partition": 7}, 7, "P.partition", RAISED, "P.partition() raised IndexError"),
        ({"compute": 9}, 9, "O.compute", RAISED, "O.compute() raised KeyError: 9"),
        ({"shape": 9}, 9, "O.compute", INVALID, "O.compute() returned list: [9]"),
        ({"multi": 5}, 5, "M.compute_multi", INVALID, "M.compute_multi() returned tuple: (5,)"),
        ({"encode": 8}, 8, "E.encode", INVALID, "E.encode() returned int: 42"),
        ({"encode_raise": 8}, 8, "E.encode", RAISED, "E.encode() raised RuntimeError: no"),
        ({"unhashable": 6}, 6, "P.partition", INVALID, "P.partition() returned list: [6]"),
    ],
)
@pytest.mark.parametrize("workers", [1, 2])
def test_a_failing_callback_drops_one_message_and_is_named(
    make_app, capsys, bad, dropped, callback, reason, shown, workers
):
    name = make_app(FAULTY.format(bad=bad))
    driver = Driver(name, workers=workers, errors="log")
    driver.feed_bytes(frames(range(1, 21)))
    newest = [o.value[-1] for o in driver.outputs]
    assert newest == [v for v in range(1, 21) if v != dropped]
    assert driver.counters == {(reason, callback): 1}
    err = capsys.readouterr().err
    assert err.startswith("ERROR: " + shown)
    assert "[pipeline 'Sequence Window', worker '" in err
    if reason == RAISED:
        assert "Traceback (most recent call last)" in err


def test_raise_mode_wraps_the_user_exception(make_app):
    name = make_app(FAULTY.format(bad={"partition": 3}))
    driver = Driver(name, workers=2)
    with pytest.raises(UserCallbackError) as err:
        driver.feed([1, 2, 3])
    assert err.value.callback == "P.partition"
    assert "P.partition() raised IndexError: no partition for 3" in str(err.value)
    assert isinstance(err.value.__cause__, IndexError)


def test_unknown_key_warns_once_per_state_and_counts(make_app, capsys):
    name = make_app(FAULTY.format(bad={"key": 7}))
    driver = Driver(name, workers=2, errors="log")
    driver.feed([7, 8, 7, 9, 7])
    assert [o.value[-1] for o in driver.outputs] == [8, 9]
    assert driver.counters == {(UNKNOWN_KEY, "P.partition"): 3}
    err = capsys.readouterr().err
    assert err.count("WARNING:") == 1
    assert (
        "WARNING: P.partition returned key 2 which is not in the key list of state "
        "'Sequence Window'; message dropped. Further drops are only counted." in err
    )


def test_repeated_failures_print_once_then_are_summarised(make_app, capsys):
    name = make_app(FAULTY.format(bad={}))
    driver = Driver(name, workers=1, errors="log")
    driver.feed_bytes(struct.pack(">I", 4) + b"abcd" + frames([1]) + struct.pack(">I", 2) + b"xy")
    assert [o.value for o in driver.outputs] == [[0, 0, 0, 1]]
    err = capsys.readouterr().err
    assert err.count("ERROR: D.decode() raised error") == 1
    callbacks = driver._planes["initializer"].callbacks
    assert callbacks.summary_lines() == ["machida: 2 message(s) dropped: raised (D.decode)"]
    assert callbacks.summary_lines() == []


def test_invalid_payload_length_closes_the_connection(make_app, capsys):
    name = make_app(FAULTY.format(bad={}))
    driver = Driver(name, workers=2, errors="log")
    outs = driver.feed_bytes(frames(range(1, 11)) + b"\x00\x00\x00\x00" + frames([11]))
    assert len(outs) == 10
    err = capsys.readouterr().err
    assert (
        "ERROR: D.payload_length() gave invalid payload length 0 "
        "[pipeline 'Sequence Window', peer in-process driver]; connection closed" in err
    )
    assert driver.feed_bytes(frames([12])) == []


def test_oversize_length(capsys):
    driver = Driver("sequence_window", errors="log")
    assert len(driver.feed_bytes(frames(range(1, 11)) + b"\xff\xff\xff\xff")) == 10
    assert "invalid payload length 4294967295" in capsys.readouterr().err


def test_system_exit_from_user_code_names_the_callback(make_app, capsys):
    name = make_app(FAULTY.format(bad={"exit": 4}))
    driver = Driver(name, workers=2, errors="log")
    with pytest.raises(SystemExit) as exit_:
        driver.feed([1, 2, 3, 4])
    assert exit_.value.code == 3
    assert "P.partition() raised SystemExit(3)" in capsys.readouterr().err


def test_serialize_failure_on_a_hop_drops_that_message(make_app, test_apps, capsys):
    name = make_app(
        "from word_lengths import *\n"
        "from word_lengths import application_setup\n"
        "import pickle\n"
        "def serialize(o):\n"
        "    if o == 'banana': raise TypeError('cannot pickle bananas')\n"
        "    return pickle.dumps(o)\n"
        "def deserialize(b):\n"
        "    return pickle.loads(b)\n"
    )
    driver = Driver(name, workers=2, errors="log")
    assert driver.owner("totals", "b") == "worker1"  # so "banana" must cross to worker1
    driver.feed(["apple banana cherry"])
    assert [o.data for o in driver.outputs] == [b"a:5 #1\n", b"c:6 #2\n"]
    assert driver.counters == {(RAISED, f"{name}.serialize"): 1}
    assert "cannot pickle bananas" in capsys.readouterr().err


def test_a_serialize_that_returns_no_bytes_is_named_with_what_it_returned(make_app, capsys):
    name = make_app(
        "from word_lengths import *\n"
        "from word_lengths import application_setup\n"
        "import pickle\n"
        "def serialize(o):\n"
        "    return 12345 if o == 'banana' else pickle.dumps(o)\n"
        "def deserialize(b):\n"
        "    return pickle.loads(b)\n"
    )
    driver = Driver(name, workers=2, errors="log")
    driver.feed(["apple banana cherry"])
    assert [o.data for o in driver.outputs] == [b"a:5 #1\n", b"c:6 #2\n"]
    assert driver.counters == {(INVALID, f"{name}.serialize"): 1}
    assert f"{name}.serialize() returned int: 12345" in capsys.readouterr().err


def test_plain_ints_hop_as_in_the_runner_without_serialize(make_app):
    name = make_app(
        "from sequence_window import *\n"
        "from sequence_window import application_setup\n"
        "import pickle\n"
        "calls = []\n"
        "def serialize(o):\n"
        "    calls.append(o)\n"
        "    return pickle.dumps(o)\n"
        "def deserialize(b):\n"
        "    return pickle.loads(b)\n"
    )
    driver = Driver(name, workers=2)
    probes = len(driver.module.calls)  # the runner's start-up check that ints come back as ints
    assert [o.value[-1] for o in driver.feed(range(1, 9))] == list(range(1, 9))
    assert len(driver.module.calls) == probes  # the odd values crossed as u64s


@settings(max_examples=50, deadline=None)
@given(st.binary(max_size=400))
def test_random_source_bytes_never_crash_or_hang(data):
    driver = Driver("sequence_window", workers=2, errors="log")
    rng = random.Random(len(data))
    pos = 0
    while pos < len(data):
        step = rng.randint(1, 40)
        driver.feed_bytes(data[pos : pos + step])
        pos += step
    driver.close()
    for out in driver.outputs:
        assert out.data[:4] == struct.pack(">I", len(out.data) - 4)


def test_a_serialized_message_too_large_to_cross_is_dropped_and_named(test_apps, monkeypatch):
    monkeypatch.setattr("machida.app.topology.MAX_MESSAGE", 20)
    driver = Driver("word_lengths", workers=2, errors="log")
    driver.feed(["apple " + "b" * 30])  # the long word's key lives on worker1
    assert [o.data for o in driver.outputs] == [b"a:5 #1\n"]
    assert driver.counters == {(INVALID, "wallaroo.serialize"): 1}


def test_the_driver_grows_and_shrinks_moving_each_state_through_serialize(make_app):
    """An author tests a migration of their own state in-process: the windows go on."""
    name = make_app(
        "import pickle\n"
        "from sequence_window import *\n"
        "from sequence_window import application_setup\n"
        "crossed = []\n"
        "def serialize(o):\n"
        "    crossed.append(type(o).__name__)\n"
        "    return pickle.dumps(o)\n"
        "def deserialize(b):\n"
        "    return pickle.loads(b)\n"
    )
    driver = Driver(name, workers=1)
    driver.feed(range(1, 11))
    assert driver.grow(["worker1"]) == [("Sequence Window", 1, "initializer", "worker1")]
    assert driver.owner("Sequence Window", 1) == "worker1"
    # the ints probe calls serialize on ints; the only other thing that crossed: the state
    assert [kind for kind in driver.module.crossed if kind != "int"] == ["SequenceWindow"]
    assert driver.grow(["worker2", "worker3"]) == []  # two keys: nothing more to even out
    assert driver.workers == ["initializer", "worker1", "worker2", "worker3"]
    outs = driver.feed(range(11, 15))
    assert [(o.worker, o.value) for o in outs] == [
        ("worker1", [5, 7, 9, 11]), ("initializer", [6, 8, 10, 12]),
        ("worker1", [7, 9, 11, 13]), ("initializer", [8, 10, 12, 14]),
    ]  # fmt: skip
    assert driver.shrink(["worker1", "worker2"]) == [
        ("Sequence Window", 1, "worker1", "worker3")
    ]  # fmt: skip
    assert [o.value for o in driver.feed([15])] == [[9, 11, 13, 15]]
    with pytest.raises(ValueError, match="other than 'initializer'"):
        driver.shrink(["initializer"])
    with pytest.raises(ValueError, match="new, distinct worker names"):
        driver.grow(["worker3"])


def test_the_driver_places_keys_off_the_initializer_when_asked():
    """As machida --state-off-initializer: the initializer holds a key only when alone."""
    driver = Driver("sequence_window", workers=1, state_off_initializer=True)
    driver.feed(range(1, 9))
    moved = [("Sequence Window", i, "initializer", "worker1") for i in (0, 1)]
    assert driver.grow(["worker1"]) == moved
    assert driver.grow(["worker2"]) == [("Sequence Window", 1, "worker1", "worker2")]
    outs = driver.feed([9, 10])
    assert [(o.worker, o.value) for o in outs] == [("worker2", [3, 5, 7, 9]),
                                                   ("worker1", [4, 6, 8, 10])]  # fmt: skip
    assert driver.shrink(["worker1"]) == [("Sequence Window", 0, "worker1", "worker2")]
    outs = driver.feed([11, 16])
    assert [(o.worker, o.value) for o in outs] == [("worker2", [5, 7, 9, 11]),
                                                   ("worker2", [6, 8, 10, 16])]  # fmt: skip
