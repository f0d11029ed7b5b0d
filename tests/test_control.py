"""The control-channel codec (machida/wire/control.py): whole, byte by byte, trailing bytes,
malformed input, and random bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.wire.control import MAX_CONTROL_FRAME, ControlDecoder, encode
from machida.wire.framing import encode_frame

MESSAGES = [
    ("hello", {"name": "worker-2", "control": ["127.0.0.1", 6001], "data": ["127.0.0.1", 6002],
               "plan": ["app: sequence_window"], "rejoin": False}),
    ("topology", {"workers": [{"name": "initializer", "control": ["h", 1], "data": ["h", 2]}]}),
    ("ready", {"name": "worker-2"}),
    ("poll", {"round": 3}),
    ("counts", {"round": 3, "sent": 10, "applied": 9, "backlog": 1}),
    ("finish", {}),
    ("rotate_log", {"worker": "wörker-é"}),
]  # fmt: skip
STREAM = b"".join(encode(kind, **fields) for kind, fields in MESSAGES)
EXPECTED = [{"type": kind, **fields} for kind, fields in MESSAGES]


def test_a_stream_decodes_whole_and_byte_by_byte():
    assert ControlDecoder().feed(STREAM) == EXPECTED
    decoder = ControlDecoder()
    assert [m for i in range(len(STREAM)) for m in decoder.feed(STREAM[i : i + 1])] == EXPECTED
    assert decoder.error is None


def test_trailing_bytes_wait_for_the_rest_of_their_frame():
    decoder = ControlDecoder()
    tail = encode("ready", name="x")
    assert decoder.feed(STREAM + tail[:5]) == EXPECTED
    assert decoder.feed(tail[5:]) == [{"type": "ready", "name": "x"}]


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (encode_frame(b"not json"), "control message is not JSON"),
        (encode_frame(b"[1, 2]"), "control message has no type"),
        (encode_frame(json.dumps({"type": 7}).encode()), "control message has no type"),
        ((MAX_CONTROL_FRAME + 1).to_bytes(4, "big"), "frame length"),
        (b"\0\0\0\1{", "frame length 1 is outside"),
        (encode_frame(b"[" * 100_000 + b"]" * 100_000), "control message is not JSON"),
    ],
)
def test_a_malformed_frame_keeps_what_came_before_and_stops_the_stream(frame, why):
    decoder = ControlDecoder()
    assert decoder.feed(STREAM + frame + encode("ready", name="late")) == EXPECTED
    assert decoder.error is not None and why in str(decoder.error)
    assert decoder.feed(encode("ready", name="later")) == []


@given(st.lists(st.integers(1, 40), max_size=30))
def test_random_splits_decode_the_same(cuts):
    decoder = ControlDecoder()
    out, pos = [], 0
    for cut in cuts:
        out += decoder.feed(STREAM[pos : pos + cut])
        pos += cut
    out += decoder.feed(STREAM[pos:])
    assert out == EXPECTED


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    decoder = ControlDecoder()
    for message in decoder.feed(data):
        assert isinstance(message["type"], str)
