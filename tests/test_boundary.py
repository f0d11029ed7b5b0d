"""The boundary codec: batches of runs, acknowledgements, replay and de-duplication."""

from __future__ import annotations

import pickle
import struct
from array import array

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.wire.boundary import (
    MAX_DATA_FRAME,
    U64_MAX,
    Ack,
    Backlog,
    BatchEvent,
    BoundaryDecoder,
    Dedup,
    Hello,
    OutgoingBoundary,
    ack,
    encode_batch,
    hello,
)

ROUTES = [(0, 1, 0), (0, 1, 1), (1, 3, 2)]


def flatten(events) -> list[tuple]:
    """Every record of every batch event as (seq, route, value)."""
    out = []
    for event in events:
        if not isinstance(event, BatchEvent):
            continue
        seq = event.first
        for p, step, key, _, values in event.runs:
            for value in values:
                out.append((seq, (p, step, key), value))
                seq += 1
    return out


def test_hello_ack_and_a_mixed_batch_decode_whole_and_byte_by_byte():
    backlog = Backlog()
    backlog.add(ROUTES[0], True, [5, U64_MAX])
    backlog.add(ROUTES[1], False, [pickle.dumps("x")])
    backlog.add(ROUTES[1], True, array("Q", [7]))
    stream = hello("initializer", 42) + b"".join(b.frame for b in backlog.take_batch()) + ack(9)
    expected = [
        (1, ROUTES[0], 5), (2, ROUTES[0], U64_MAX), (3, ROUTES[1], pickle.dumps("x")),
        (4, ROUTES[1], 7),
    ]  # fmt: skip
    events = BoundaryDecoder().feed(stream)
    assert events[0] == Hello("initializer", 42)
    assert events[-1] == Ack(9)
    assert flatten(events) == expected
    decoder = BoundaryDecoder()
    split = [e for i in range(len(stream)) for e in decoder.feed(stream[i : i + 1])]
    assert flatten(split) == expected


def test_ints_travel_as_ints_and_bytes_as_bytes():
    (event,) = BoundaryDecoder().feed(encode_batch(1, [[ROUTES[0], True, [1, 2]],
                                                      [ROUTES[0], False, [b"ab"]]]))  # fmt: skip
    assert event == BatchEvent(1, [(0, 1, 0, True, [1, 2]), (0, 1, 0, False, [b"ab"])])


def test_backlog_numbers_keeps_until_ack_and_replays_the_rest():
    backlog = Backlog()
    for v in range(1, 11):
        backlog.add(ROUTES[v % 2], True, [v])
    assert backlog.unacked == 10
    first = flatten(BoundaryDecoder().feed(b"".join(b.frame for b in backlog.take_batch())))
    assert [r[0] for r in first] == list(range(1, 11))
    backlog.add(ROUTES[2], True, array("Q", range(11, 14)))
    backlog.take_batch()
    backlog.ack(4)
    assert backlog.unacked == 9 and backlog.acked == 4
    replayed = flatten(BoundaryDecoder().feed(b"".join(b.frame for b in backlog.replay())))
    assert [(seq, value) for seq, _, value in replayed] == [(s, s) for s in range(5, 14)]
    backlog.ack(13)
    assert backlog.unacked == 0 and backlog.replay() == []
    backlog.ack(2)  # a stale ack changes nothing
    assert backlog.acked == 13


def test_dedup_skips_what_was_applied_and_resets_for_a_new_incarnation():
    dedup = Dedup()
    dedup.start(1)
    assert dedup.skip(1, 5) == 0
    dedup.applied(5)
    assert dedup.skip(3, 5) == 3 and dedup.skip(6, 2) == 0 and dedup.skip(1, 2) == 2
    dedup.start(1)
    assert dedup.seq == 5
    dedup.start(2)
    assert dedup.seq == 0


def _frame(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", 1 + len(body)) + kind + body


SHORT_RUN = struct.pack(">QBHHII", 1, 1, 0, 1, 0, 3) + struct.pack(">QQ", 1, 2)
LONG_MESSAGE = struct.pack(">QBHHII", 1, 0, 0, 1, 0, 1) + struct.pack(">I", 99) + b"abc"
UNKNOWN_RUN = struct.pack(">QBHHII", 1, 7, 0, 1, 0, 1)


@pytest.mark.parametrize(
    "frame",
    [_frame(b"Z", b""), _frame(b"M", SHORT_RUN), _frame(b"M", LONG_MESSAGE),
     _frame(b"M", UNKNOWN_RUN), _frame(b"H", b"{not json"), _frame(b"A", b"\x01")],
)  # fmt: skip
def test_malformed_frames_set_an_error(frame):
    decoder = BoundaryDecoder()
    decoder.feed(frame)
    assert decoder.error is not None


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from(ROUTES), st.one_of(st.integers(0, U64_MAX), st.binary())),
        max_size=60,
    ),
    st.lists(st.integers(1, 60), max_size=5),
    st.integers(1, 97),
)
def test_any_records_any_batching_any_split_round_trip(records, cuts, step):
    backlog, frames, done = Backlog(), [], 0
    for at in [*sorted(cuts), len(records)]:
        for route, value in records[done:at]:
            backlog.add(route, isinstance(value, int), [value])
        done = max(done, at)
        frames += [b.frame for b in backlog.take_batch()]
    stream = b"".join(frames)
    decoder = BoundaryDecoder()
    events = [e for i in range(0, len(stream), step) for e in decoder.feed(stream[i : i + step])]
    got = [(route, value) for _, route, value in flatten(events)]
    assert got == list(records)
    assert decoder.error is None


@settings(max_examples=100, deadline=None)
@given(st.binary(max_size=300))
def test_random_bytes_never_raise(data):
    decoder = BoundaryDecoder()
    decoder.feed(data)


def test_dedup_refuses_a_gap_once_it_knows_an_incarnation():
    dedup = Dedup()
    dedup.start(7)
    assert not dedup.gap(5000)  # nothing known yet: a replay may start anywhere
    dedup.applied(5009)
    assert not dedup.gap(5010) and not dedup.gap(4000) and dedup.gap(5011)
    dedup.start(8)  # a new incarnation of the upstream starts from nothing
    assert not dedup.gap(1) and dedup.seq == 0
    restored = Dedup()
    restored.restore(7, 100)  # from an event log: known at once
    assert restored.gap(102) and not restored.gap(101)


def test_batches_are_cut_to_fit_a_frame_and_numbered_across_the_cut(monkeypatch):
    monkeypatch.setattr("machida.wire.boundary.MAX_DATA_FRAME", 200)
    backlog = Backlog()
    backlog.add(ROUTES[0], False, [bytes([i]) * 40 for i in range(6)])
    backlog.add(ROUTES[1], True, list(range(30)))
    cut = backlog.take_batch()
    assert len(cut) > 2 and all(len(b.frame) <= 4 + 200 for b in cut)
    assert [b.first for b in cut] == [
        1,
        *(sum(b.records for b in cut[:i]) + 1 for i in range(1, len(cut))),
    ]
    decoder = BoundaryDecoder()
    decoder._frames.max_length = 200
    records = flatten(e for b in cut for e in decoder.feed(b.frame))
    assert [seq for seq, _, _ in records] == list(range(1, 37))
    assert [v for _, _, v in records] == [bytes([i]) * 40 for i in range(6)] + list(range(30))
    replayed = flatten(decoder.feed(b"".join(b.frame for b in backlog.replay())))
    assert replayed == records and decoder.error is None


def test_a_frame_longer_than_a_batch_may_be_is_refused_at_its_header():
    decoder = BoundaryDecoder()
    header = struct.pack(">IBQ", MAX_DATA_FRAME + 1, 0x4D, 1)
    assert decoder.feed(header + b"\0" * 1000) == []
    assert "frame length" in str(decoder.error) and decoder._frames.pending == 0


def test_a_backlog_restored_from_a_log_replays_what_was_not_acknowledged():
    sender = Backlog()
    for v in range(1, 21):
        sender.add(ROUTES[v % 2], True, [v])
        if v % 5 == 0:
            sender.take_batch()
    logged = sender.replay()  # what the event log kept of the batches, before any ack
    boundary = OutgoingBoundary("worker-2")
    boundary.restore(acked=7, next_seq=21, frames=[b.frame for b in logged])
    restored = boundary.backlog
    assert (restored.acked, restored.next_seq, restored.unacked) == (7, 21, 13)
    replayed = flatten(BoundaryDecoder().feed(b"".join(b.frame for b in restored.replay())))
    assert [(seq, value) for seq, _, value in replayed] == [(s, s) for s in range(8, 21)]
    restored.add(ROUTES[0], True, [99])
    assert [b.first for b in restored.take_batch()] == [21]
    empty = Backlog()
    empty.restore(31, [], next_seq=31, acked=30)
    assert (empty.acked, empty.next_seq, empty.unacked) == (30, 31, 0)


@pytest.mark.parametrize(
    ("body", "why"),
    [
        (b'{"worker": "w", "incarnation": Infinity}', "no incarnation in 0..2**64-1: inf"),
        (b'{"worker": "w", "incarnation": -1}', "no incarnation in 0..2**64-1: -1"),
        (b'{"worker": "w", "incarnation": 18446744073709551616}', "0..2**64-1"),
        (b'{"worker": "w", "incarnation": true}', "no incarnation in 0..2**64-1: True"),
        (b'{"worker": "w", "incarnation": "5"}', "no incarnation in 0..2**64-1: '5'"),
        (b'{"worker": 5, "incarnation": 5}', "hello names no worker: 5"),
        (b'{"worker": "w"}', "'incarnation'"),
        (b'{"worker": [' * 50_000, "recursion depth"),
    ],
)
def test_a_hello_that_names_no_worker_or_incarnation_stops_the_stream(body, why):
    decoder = BoundaryDecoder()
    frame = struct.pack(">IB", 1 + len(body), 0x48) + body
    assert decoder.feed(frame + ack(3)) == []
    assert decoder.error is not None and why in str(decoder.error)
