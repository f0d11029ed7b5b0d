"""Unit tests of every class of sequence_window.py, and its compatibility promises."""

from __future__ import annotations

import ast
import pathlib
import pickle
import struct
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.app.loader import prepare_sys_path

prepare_sys_path()
import sequence_window as sw  # noqa: E402  (needs the runner's wallaroo on sys.path)

APP_FILE = pathlib.Path(sw.__file__)
VERMIN = str(pathlib.Path(sys.executable).parent / "vermin")


def test_decoder_framing_and_value():
    decoder = sw.Decoder()
    assert decoder.header_length() == 4
    assert decoder.payload_length(b"\x00\x00\x00\x08") == 8
    assert decoder.payload_length(b"\x01\x00\x00\x00") == 1 << 24
    assert decoder.decode(b"\x00\x00\x00\x00\x00\x00\x03\xe8") == 1000
    assert decoder.decode(b"\xff" * 8) == 2**64 - 1


def test_decoder_rejects_a_payload_that_is_not_eight_bytes():
    with pytest.raises(struct.error):
        sw.Decoder().decode(b"\x00\x00\x00\x01")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, [1]),
        (11, [11]),
        (12, [12, 13, 14]),
        (13, None),
        (14, None),
        (15, [15]),
        (24, [24, 25, 26]),
        (25, None),
        (26, None),
        (0, [0]),
    ],
)
def test_maybe_one_to_many(value, expected):
    step = sw.MaybeOneToMany()
    assert step.compute_multi(value) == expected
    assert step.name() == "I might one to many this message!"


def test_maybe_one_to_many_keeps_every_value_once_in_order():
    step = sw.MaybeOneToMany()
    out = [v for n in range(1, 200) for v in (step.compute_multi(n) or [])]
    # 192 is a multiple of 12, so 193 and 194 are emitted early with it.
    assert out == list(range(1, 200))


def test_partition_is_parity():
    pf = sw.SequencePartitionFunction()
    assert [pf.partition(v) for v in (1, 2, 3, 10, 2**64 - 1)] == [1, 0, 1, 0, 1]


def test_state_builder_makes_a_fresh_zero_window_each_time():
    builder = sw.SequenceWindowStateBuilder()
    a, b = builder.build(), builder.build()
    assert isinstance(a, sw.SequenceWindow)
    assert a.get_window() == [0, 0, 0, 0]
    a.update(5)
    assert b.get_window() == [0, 0, 0, 0]


def test_window_keeps_the_last_four_and_returns_a_copy():
    window = sw.SequenceWindow()
    for v in (1, 3, 5, 7, 9):
        window.update(v)
    got = window.get_window()
    assert got == [3, 5, 7, 9]
    got.append(99)
    assert window.get_window() == [3, 5, 7, 9]


def test_observe_new_value_returns_the_window_and_a_bool_persist():
    obs = sw.ObserveNewValue()
    state = sw.SequenceWindow()
    result, persist = obs.compute(2, state)
    assert (result, persist) == ([0, 0, 0, 2], True)
    result2, _ = obs.compute(4, state)
    assert result == [0, 0, 0, 2] and result2 == [0, 0, 2, 4]
    assert obs.name() == "Observe New Value"


def test_encoder_bytes_exactly():
    assert sw.Encoder().encode([0, 0, 0, 1]) == b"\x00\x00\x00\x09[0,0,0,1]"
    big = sw.Encoder().encode([994, 996, 998, 1000])
    assert big == struct.pack(">I", 18) + b"[994,996,998,1000]"
    assert isinstance(big, bytes)


def test_module_serialize_round_trips_messages_and_states():
    window = sw.SequenceWindow()
    window.update(7)
    back = sw.deserialize(sw.serialize(window))
    assert back.get_window() == [0, 0, 0, 7]
    assert sw.deserialize(sw.serialize(2**64 - 1)) == 2**64 - 1
    assert sw.serialize(5) == pickle.dumps(5)


def test_application_setup_builds_the_2017_action_list():
    actions = sw.application_setup(["machida", "--in", "127.0.0.1:7010", "--out", "h:7002"])
    kinds = [a[0] for a in actions]
    assert kinds == ["name", "new_pipeline", "to", "to_state_partition", "to_sink"]
    assert actions[0] == ("name", "Sequence Window")
    _, pipeline, source = actions[1]
    assert pipeline == "Sequence Window"
    assert source[:3] == ("tcp", "127.0.0.1", "7010") and isinstance(source[3], sw.Decoder)
    assert actions[2] == ("to", sw.MaybeOneToMany)
    _, comp, builder, state_name, pf, keys = actions[3]
    assert isinstance(comp, sw.ObserveNewValue)
    assert isinstance(builder, sw.SequenceWindowStateBuilder)
    assert isinstance(pf, sw.SequencePartitionFunction)
    assert (state_name, keys) == ("Sequence Window", [0, 1])
    assert actions[4][1][:3] == ("tcp", "h", "7002") and isinstance(actions[4][1][3], sw.Encoder)


@given(st.lists(st.integers(min_value=0, max_value=2**64 - 1), max_size=60))
def test_window_property_last_four_in_order_zero_padded(values):
    state = sw.SequenceWindowStateBuilder().build()
    obs = sw.ObserveNewValue()
    for i, v in enumerate(values):
        window, persist = obs.compute(v, state)
        seen = values[: i + 1]
        assert window == [0, 0, 0, 0, *seen][-4:]
        assert persist is True


def test_vermin_finds_no_syntax_newer_than_2_7_and_3_0():
    proc = subprocess.run(
        [VERMIN, "--no-tips", "-t=2.7-", "-t=3.0-", "--violations", str(APP_FILE)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Minimum required versions: 2.7, 3.0" in proc.stdout


def test_imports_are_standard_library_or_wallaroo_only():
    tree = ast.parse(APP_FILE.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add((node.module or "").split(".")[0])
    assert names == {"pickle", "struct", "wallaroo"}
    assert names - {"wallaroo"} <= set(sys.stdlib_module_names)
