"""The control-channel codec (machida/wire/control.py): typed messages, whole, byte by byte,
trailing bytes, malformed input and fields, and random bytes."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.wire import control
from machida.wire.control import MAX_CONTROL_FRAME, ControlDecoder, decode, encode
from machida.wire.framing import encode_frame

# Each message with the JSON object it is on the wire (the format of earlier versions).
MESSAGES = [
    (control.Hello("worker-2", ("127.0.0.1", 6001), ("127.0.0.1", 6002),
                   ("app: sequence_window",)),
     {"type": "hello", "name": "worker-2", "control": ["127.0.0.1", 6001],
      "data": ["127.0.0.1", 6002], "plan": ["app: sequence_window"], "rejoin": False,
      "join": 0}),
    (control.JoinVia(("10.0.0.1", 6000)), {"type": "join_via", "initializer": ["10.0.0.1", 6000]}),
    (control.Migrated("w3", 2), {"type": "migrated", "name": "w3", "version": 2}),
    (control.Resume(2), {"type": "resume", "version": 2}),
    (control.Leave(3), {"type": "leave", "version": 3}),
    (control.ShrinkRequest(7, "w2,w3"), {"type": "shrink_request", "request": 7, "text": "w2,w3"}),
    (control.ShrinkReply(7, 16, "Shrinking by 2 workers!"),
     {"type": "shrink_reply", "request": 7, "msg_id": 16, "text": "Shrinking by 2 workers!"}),
    (control.Refused("the cluster already has its 2 workers"),
     {"type": "refused", "reason": "the cluster already has its 2 workers"}),
    (control.Members((control.Worker("initializer", ("h", 1), ("h", 2)),), 2,
                     {"s": ("initializer",)}),
     {"type": "topology", "workers": [{"name": "initializer", "control": ["h", 1],
                                       "data": ["h", 2]}], "version": 2,
      "owners": {"s": ["initializer"]}, "changing": False, "leaving": []}),
    (control.Ready("worker-2"), {"type": "ready", "name": "worker-2"}),
    (control.ShutdownRequest("bye"), {"type": "shutdown_request", "reason": "bye"}),
    (control.Poll(3), {"type": "poll", "round": 3, "shutdown": True}),
    (control.Counts(3, 10, 9, 1),
     {"type": "counts", "round": 3, "sent": 10, "applied": 9, "backlog": 1}),
    (control.Finish(), {"type": "finish"}),
    (control.Finished("worker-2", 0), {"type": "finished", "name": "worker-2", "code": 0}),
    (control.Abort("drain deadline passed"), {"type": "abort", "reason": "drain deadline passed"}),
    (control.RotateLog("wörker-é"), {"type": "rotate_log", "worker": "wörker-é"}),
]  # fmt: skip
STREAM = b"".join(encode(message) for message, _ in MESSAGES)
EXPECTED = [message for message, _ in MESSAGES]


def test_every_message_type_is_listed_once():
    assert sorted(type(m).__name__ for m in EXPECTED) == sorted(
        cls.__name__ for cls in control.MESSAGES.values()
    )


@pytest.mark.parametrize(("message", "wire"), MESSAGES)
def test_each_message_is_the_json_object_it_always_was(message, wire):
    assert json.loads(encode(message)[4:]) == wire
    assert decode(json.dumps(wire).encode()) == message


def test_a_stream_decodes_whole_and_byte_by_byte():
    assert ControlDecoder().feed(STREAM) == EXPECTED
    decoder = ControlDecoder()
    assert [m for i in range(len(STREAM)) for m in decoder.feed(STREAM[i : i + 1])] == EXPECTED
    assert decoder.error is None


def test_trailing_bytes_wait_for_the_rest_of_their_frame():
    decoder = ControlDecoder()
    tail = encode(control.Ready("x"))
    assert decoder.feed(STREAM + tail[:5]) == EXPECTED
    assert decoder.feed(tail[5:]) == [control.Ready("x")]


def test_optional_fields_take_their_defaults_and_unknown_ones_are_ignored():
    assert decode(b'{"type": "abort"}') == control.Abort("")
    # the messages of a worker from before autoscale: no placement, no join count
    member = {"name": "i", "control": ["h", 1], "data": ["h", 2]}
    old = decode(json.dumps({"type": "topology", "workers": [member]}).encode())
    assert old == control.Members((control.Worker("i", ("h", 1), ("h", 2)),))
    assert decode(b'{"type": "poll", "round": 1}') == control.Poll(1, shutdown=True)
    hello = {"type": "hello", "name": "w", "control": ["h", 1], "data": ["h", 2], "plan": [],
             "later": {"from": "a newer worker"}}  # fmt: skip
    assert decode(json.dumps(hello).encode()) == control.Hello("w", ("h", 1), ("h", 2), ())


def _frame(obj) -> bytes:
    return encode_frame(json.dumps(obj).encode())


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        (encode_frame(b"not json"), "control message is not JSON"),
        (_frame([1, 2]), "control message has no type"),
        (_frame({"type": 7}), "control message has no type"),
        (_frame({"type": "gossip"}), "unknown control message type 'gossip'"),
        (_frame({"type": "ready"}), "malformed 'ready' message: no 'name'"),
        (_frame({"type": "ready", "name": 5}), "malformed 'ready' message: 'name' is 5"),
        (_frame({"type": "poll", "round": True}), "malformed 'poll' message: 'round' is True"),
        (_frame({"type": "poll", "round": "3"}), "malformed 'poll' message: 'round' is '3'"),
        (_frame({"type": "hello", "name": "w", "control": ["h"], "data": ["h", 2], "plan": []}),
         "malformed 'hello' message: 'control' is ['h']"),
        (_frame({"type": "hello", "name": "w", "control": ["h", 1], "data": ["h", 2],
                 "plan": ["a", 1]}), "malformed 'hello' message: 'plan' is ['a', 1]"),
        (_frame({"type": "topology", "workers": [{"name": "w", "control": ["h", 1]}]}),
         "malformed 'topology' message: 'workers' is"),
        (_frame({"type": "topology", "workers": [], "owners": {"s": ["w", 2]}}),
         "malformed 'topology' message: 'owners' is"),
        (_frame({"type": "topology", "workers": [], "owners": ["w"]}),
         "malformed 'topology' message: 'owners' is"),
        ((MAX_CONTROL_FRAME + 1).to_bytes(4, "big"), "frame length"),
        (b"\0\0\0\1{", "frame length 1 is outside"),
        (encode_frame(b"[" * 100_000 + b"]" * 100_000), "control message is not JSON"),
    ],
)  # fmt: skip
def test_a_malformed_frame_keeps_what_came_before_and_stops_the_stream(frame, why):
    decoder = ControlDecoder()
    assert decoder.feed(STREAM + frame + encode(control.Ready("late"))) == EXPECTED
    assert decoder.error is not None and why in str(decoder.error)
    assert decoder.feed(encode(control.Ready("later"))) == []


@given(st.lists(st.integers(1, 40), max_size=30))
def test_random_splits_decode_the_same(cuts):
    decoder = ControlDecoder()
    out, pos = [], 0
    for cut in cuts:
        out += decoder.feed(STREAM[pos : pos + cut])
        pos += cut
    out += decoder.feed(STREAM[pos:])
    assert out == EXPECTED


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                max_size=3),
    max_leaves=8,
)  # fmt: skip


@given(st.sampled_from(sorted(control.MESSAGES)), st.dictionaries(
    st.sampled_from(["name", "control", "data", "plan", "rejoin", "reason", "workers", "round",
                     "sent", "applied", "backlog", "code", "worker", "join", "initializer",
                     "version", "owners", "changing", "leaving", "request", "text", "msg_id",
                     "shutdown"]), JSON))  # fmt: skip
def test_any_fields_give_a_checked_message_or_a_frame_error(kind, fields):
    decoder = ControlDecoder()
    messages = decoder.feed(_frame({**fields, "type": kind}))
    assert (messages == []) == (decoder.error is not None)
    for message in messages:
        assert isinstance(message, control.MESSAGES[kind])
        assert decode(encode(message)[4:]) == message  # it round-trips


@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    decoder = ControlDecoder()
    for message in decoder.feed(data):
        assert type(message) in control.MESSAGES.values()
