"""The exactly-once sink protocol's bytes (machida/wire/exactly_once.py): every frame whole, byte
by byte and at random splits; bad bytes refused with one error, never a crash; the worker's
backlog and its side of the conversation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.errors import FrameError
from machida.wire import exactly_once as protocol
from machida.wire.boundary import COUNTERS, BoundaryDecoder, decode_counters, encode_batch
from machida.wire.boundary import encode_counters as pack_counters
from machida.wire.exactly_once import (
    MAX_SINK_FRAME,
    NO_KEY,
    OutgoingSink,
    OutputRun,
    SinkAcks,
    SinkBacklog,
    SinkDecoder,
    SinkHello,
    SinkMarks,
    SinkOutputs,
    Stream,
)

A = Stream(0, 1, 0xDEADBEEF)
B = Stream(1, NO_KEY, 2**64 - 1)


def conversation() -> tuple[bytes, list]:
    frames = [protocol.hello("worker-2", [A, B]), protocol.marks({A: 3}),
              *protocol.outputs([OutputRun(A, 4, [b"x", b""]), OutputRun(B, 1, [b"yz"])]),
              protocol.acks({A: 5, B: 1})]  # fmt: skip
    events = [SinkHello("worker-2", [A, B]), SinkMarks({A: 3}),
              SinkOutputs([OutputRun(A, 4, [b"x", b""]), OutputRun(B, 1, [b"yz"])]),
              SinkAcks({A: 5, B: 1})]  # fmt: skip
    return b"".join(frames), events


def test_every_frame_decodes_whole_and_byte_by_byte():
    data, events = conversation()
    assert SinkDecoder().feed(data) == events
    decoder = SinkDecoder()
    assert [e for i in range(len(data)) for e in decoder.feed(data[i : i + 1])] == events
    assert decoder.pending == 0 and decoder.error is None


@given(st.lists(st.integers(0, 400), max_size=8))
def test_any_split_of_a_stream_decodes_to_the_same_events(cuts):
    data, events = conversation()
    decoder, got, start = SinkDecoder(), [], 0
    for cut in sorted(cuts):
        got += decoder.feed(data[start:cut])
        start = max(start, cut)
    got += decoder.feed(data[start:])
    assert got == events


@settings(max_examples=300)
@given(st.binary(max_size=200))
def test_random_bytes_give_events_or_one_error_never_a_crash(data):
    decoder = SinkDecoder()
    decoder.feed(data)
    if decoder.error is not None:
        assert isinstance(decoder.error, FrameError)
        assert decoder.feed(b"\x00\x00\x00\x01A") == []  # nothing more is read


def frame(body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + body


@pytest.mark.parametrize(("frame", "why"), [
    (frame(b"[0"), "not a frame of the exactly-once sink protocol"),
    (frame(b"K\x00\x00\x00\x02"), "announces 2 marks"),
    (frame(b'H{"worker": 1}'), "'streams'"),
    (frame(b'H{"worker": "w", "streams": [[1]]}'), "not a stream"),
    (frame(b'H{"worker": "w", "streams": [[1, 2, -3]]}'), "out of range"),
    (frame(protocol.outputs([OutputRun(A, 1, [b"abc"])])[0][4:-1]), "overrun their frame"),
    (frame(protocol.outputs([OutputRun(A, 1, [b"abc"])])[0][4:31]), "overruns its frame"),
])  # fmt: skip
def test_a_frame_that_cannot_be_trusted_is_refused_with_one_error(frame, why):
    decoder = SinkDecoder()
    assert decoder.feed(frame + protocol.acks({})) == []
    assert why in str(decoder.error)


def test_output_numbered_from_zero_is_refused():
    frame = protocol.outputs([OutputRun(A, 1, [b"a"])])[0]
    zero = frame[:19] + (0).to_bytes(8, "big") + frame[27:]  # the run's first number
    decoder = SinkDecoder()
    decoder.feed(zero)
    assert "numbered from 1" in str(decoder.error)


def test_a_frame_longer_than_the_limit_is_refused_at_its_header():
    decoder = SinkDecoder()
    assert decoder.feed((MAX_SINK_FRAME + 1).to_bytes(4, "big") + b"O") == []
    assert decoder.pending == 0
    assert decoder.error is not None


def test_large_output_is_cut_into_frames_that_fit():
    big = [b"x" * (5 * 1024 * 1024)] * 13  # 65 MiB
    frames = protocol.outputs([OutputRun(A, 1, big)])
    assert len(frames) > 2 and all(len(f) <= MAX_SINK_FRAME + 4 for f in frames)
    runs = [run for f in frames for run in SinkDecoder().feed(f)[0].runs]
    assert [r.first for r in runs] == [1] + [1 + sum(len(r.values) for r in runs[:i])
                                             for i in range(1, len(runs))]  # fmt: skip
    assert sum(len(r.values) for r in runs) == 13


def test_the_counters_of_a_moving_key_cross_a_boundary_as_one_record():
    record = pack_counters({0: (7, 41), 2: (9, 3)})
    frame = encode_batch(5, [[(0, 1, 1), COUNTERS, [record]]])
    (batch,) = BoundaryDecoder().feed(frame)
    assert batch.runs == [(0, 1, 1, COUNTERS, [record])]
    assert decode_counters(record) == {0: (7, 41), 2: (9, 3)}
    with pytest.raises(FrameError):
        decode_counters(record[:-1])


# -- the worker's side -------------------------------------------------------------------------


def test_the_backlog_keeps_each_stream_until_its_mark_and_replays_the_rest_in_order():
    backlog = SinkBacklog()
    backlog.add([OutputRun(A, 1, [b"a", b"bb"]), OutputRun(B, 1, [b"c"])])
    backlog.add([OutputRun(A, 3, [b"d"])])
    assert (backlog.records, backlog.bytes) == (4, 5)
    assert not backlog.ack({A: 0})
    assert backlog.ack({A: 2})
    assert (backlog.records, backlog.bytes) == (2, 2)
    assert backlog.runs() == [OutputRun(A, 3, [b"d"]), OutputRun(B, 1, [b"c"])]
    assert backlog.ack({A: 1, B: 1})  # an older mark changes nothing of A
    assert backlog.runs() == [OutputRun(A, 3, [b"d"])] and backlog.streams() == [A]
    assert backlog.acked == {A: 2, B: 1}


def test_a_connection_says_hello_sends_nothing_before_the_marks_then_what_is_not_held():
    sink = OutgoingSink()
    sink.backlog.add([OutputRun(A, 1, [b"a", b"b", b"c"])])
    hello = SinkDecoder().feed(sink.opened("worker-2"))
    assert hello == [SinkHello("worker-2", [A])] and not sink.ready
    resend, freed = sink.read(protocol.marks({A: 2}))
    assert sink.ready and freed
    assert [e.runs for e in SinkDecoder().feed(b"".join(resend))] == [[OutputRun(A, 3, [b"c"])]]
    assert sink.read(protocol.acks({A: 3})) == ([], True)
    assert sink.backlog.records == 0


@pytest.mark.parametrize("frame", [protocol.acks({A: 1}), protocol.hello("x", [])])
def test_anything_but_the_marks_first_is_an_error(frame):
    sink = OutgoingSink()
    sink.opened("worker-2")
    sink.read(frame)
    assert sink.decoder.error is not None and not sink.ready
