"""The metrics stream: histogram bins, stats records, the record codec, the client on sockets."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import struct
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.metrics import (
    BINS,
    FORMAT,
    MAX_RECORD,
    Histogram,
    MetricsClient,
    RecordDecoder,
    Stats,
    bin_of,
    encode_record,
    serve_records,
    upper_bound,
)
from machida.metrics.client import MAX_BUFFERED

# -- histogram -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ns", "index"),
    [
        (-5, 0),
        (0, 0),
        (1, 0),
        (2, 1),
        (3, 2),
        (4, 2),
        (5, 3),
        (1000, 10),
        (1024, 10),
        (1025, 11),
        (2**40, 40),
        (2**40 + 1, 41),
        (2**63, 63),
        (2**70, BINS - 1),
    ],
)
def test_bin_boundaries(ns, index):
    assert bin_of(ns) == index
    if 0 < index < BINS - 1:
        assert upper_bound(index - 1) < ns <= upper_bound(index)


def test_histogram_add_and_sparse_json():
    h = Histogram()
    for ns in (1, 2, 3, 4, 1000, 2**40):
        h.add(ns)
    h.add_many(1000, 5)
    assert h.to_json() == {"0": 1, "1": 1, "2": 2, "10": 6, "40": 1}
    assert h.count == 11
    assert Histogram.from_json(json.loads(json.dumps(h.to_json()))).counts == h.counts


def test_histogram_percentiles_are_bin_upper_bounds():
    h = Histogram()
    assert h.percentile(0.5) is None
    h.add_many(3, 50)  # bin 2, <= 4 ns
    h.add_many(1000, 45)  # bin 10, <= 1024 ns
    h.add_many(2**20, 4)  # bin 20
    h.add(2**30)  # bin 30
    assert h.percentile(0.5) == 4
    assert h.percentile(0.51) == 1024
    assert h.percentile(0.95) == 1024
    assert h.percentile(0.99) == 2**20
    assert h.percentile(1.0) == 2**30
    assert h.percentile(0.0) == 4


def test_percentile_rank_ignores_float_noise():
    h = Histogram()
    h.add_many(1, 7)
    h.add_many(2**10, 93)
    assert h.percentile(0.07) == 1  # 0.07 * 100 is 7.000000000000001 in floats


def test_histogram_merge():
    a, b = Histogram(), Histogram()
    a.add_many(10, 2)
    b.add_many(10, 3)
    b.add(2**50)
    assert a.merge(b) is a
    assert a.to_json() == {"4": 5, "50": 1}
    assert b.to_json() == {"4": 3, "50": 1}


@pytest.mark.parametrize(
    "data", [{"-1": 3}, {str(BINS): 1}, {"x": 1}, {"2": -1}, {"2": 1.0}, {"2": "1"}, {"2": True}]
)
def test_histogram_from_json_refuses_bad_bins_and_counts(data):
    with pytest.raises(ValueError):
        Histogram.from_json(data)


def test_histogram_minus_is_what_was_counted_since():
    older, newer = Histogram(), Histogram()
    older.add_many(10, 2)
    newer.add_many(10, 5)
    newer.add(2**50)
    assert newer.minus(older).to_json() == {"4": 3, "50": 1}
    assert older.minus(newer).count == 0  # never below zero
    assert newer.to_json() == {"4": 5, "50": 1}  # neither changes
    assert Histogram(newer.counts).counts == newer.counts


# -- stats -----------------------------------------------------------------------------------


def test_step_and_pipeline_objects_are_stable_references():
    stats = Stats("w1")
    step = stats.step("P", "Double")
    assert stats.step("P", "Double") is step
    assert stats.pipeline("P").steps["Double"] is step
    assert stats.pipeline("Q") is stats.pipeline("Q")
    with pytest.raises(AttributeError):
        step.typo = 1  # __slots__: a misspelt counter fails loudly instead of counting nowhere


def test_snapshot_shape_and_totals():
    stats = Stats("w1")
    p, q = stats.pipeline("P"), stats.pipeline("Q")
    double = stats.step("P", "Double")
    for _ in range(3):
        p.messages_in += 1
        double.messages_in += 1
        double.messages_out += 2
    p.messages_out += 6
    p.latency.add_many(1500, 6)
    q.messages_arrived += 4
    q.messages_forwarded += 1
    q.latency.add(3)
    snap = stats.snapshot(now=1234.5)
    assert json.loads(json.dumps(snap)) == snap
    assert snap["format"] == FORMAT
    assert snap["worker"] == "w1"
    assert snap["time"] == 1234.5
    assert snap["seq"] == 1
    assert snap["elapsed_s"] >= 0
    assert snap["pipelines"]["P"] == {
        "messages_in": 3,
        "messages_arrived": 0,
        "messages_forwarded": 0,
        "messages_out": 6,
        "latency": {"11": 6},
        "steps": {"Double": {"messages_in": 3, "messages_out": 6}},
    }
    assert snap["totals"] == {
        "messages_in": 3,
        "messages_arrived": 4,
        "messages_forwarded": 1,
        "messages_out": 6,
        "latency": {"2": 1, "11": 6},
    }
    assert snap["stream"] == {"records_sent": 0, "records_dropped": 0, "connections": 0}
    assert stats.snapshot()["seq"] == 2


# -- codec -----------------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=10,
)
records = st.dictionaries(st.text(), json_values, max_size=5)


def test_decode_whole_byte_by_byte_and_with_trailing_bytes():
    recs = [Stats("w").snapshot(now=1.0), {"a": [1, "\u00e9"]}, {}]
    stream = b"".join(encode_record(r) for r in recs)
    assert RecordDecoder().feed(stream) == recs
    dec = RecordDecoder()
    out = [r for i in range(len(stream)) for r in dec.feed(stream[i : i + 1])]
    assert out == recs
    dec = RecordDecoder()
    assert dec.feed(stream + stream[:7]) == recs
    assert dec.error is None


@settings(max_examples=150, deadline=None)
@given(st.lists(records, max_size=5), st.data())
def test_random_splits_decode_to_the_same_records(recs, data):
    stream = b"".join(encode_record(r) for r in recs)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    dec = RecordDecoder()
    out = []
    for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
        out += dec.feed(stream[start:stop])
    assert out == recs
    assert dec.error is None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=64), max_size=8))
def test_random_bytes_never_hang_or_crash(chunks):
    dec = RecordDecoder()
    for chunk in chunks:
        for rec in dec.feed(chunk):
            assert isinstance(rec, dict)


@pytest.mark.parametrize(
    ("bad", "why"),
    [
        (struct.pack(">I", MAX_RECORD + 1), "outside"),
        (struct.pack(">I", 3) + b"{x}", "not JSON"),
        (struct.pack(">I", 2) + b"\xff\xfe", "not JSON"),
        (struct.pack(">I", 3) + b"[1]", "JSON list"),
    ],
)
def test_bad_record_sets_error_after_the_good_ones(bad, why):
    good = encode_record({"n": 1})
    dec = RecordDecoder()
    assert dec.feed(good + bad + good) == [{"n": 1}]
    assert why in str(dec.error)
    assert dec.feed(good) == []


def test_oversized_record_is_refused_by_the_encoder():
    with pytest.raises(ValueError):
        encode_record({"x": "y" * MAX_RECORD})


# -- client on real sockets ------------------------------------------------------------------

INTERVAL = 0.05
RETRY = 0.05


async def wait_until(predicate, timeout: float = 5.0) -> None:
    """Poll ``predicate`` until true; fail the test at the deadline."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        await asyncio.sleep(0.005)


def closed_port() -> int:
    """A loopback port nothing listens on (just released by us)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_client_delivers_records_with_growing_counters():
    async def main():
        stats = Stats("w1")
        step = stats.step("P", "Double")
        got: list[dict] = []

        def on_record(rec):
            got.append(rec)
            step.messages_in += 1  # each record sees one more than the one before

        server = await serve_records("127.0.0.1", 0, on_record)
        client = MetricsClient("127.0.0.1", server.port, stats, interval=INTERVAL)
        client.start()
        await wait_until(lambda: len(got) >= 4)
        await client.stop()
        server.close()
        await server.wait_closed()
        return got

    got = asyncio.run(main())
    assert all(rec["worker"] == "w1" and rec["format"] == FORMAT for rec in got)
    seqs = [rec["seq"] for rec in got]
    assert seqs == sorted(set(seqs))
    counts = [rec["pipelines"]["P"]["steps"]["Double"]["messages_in"] for rec in got]
    assert counts == list(range(len(got)))
    assert [rec["stream"]["records_sent"] for rec in got] == list(range(len(got)))


def test_client_without_receiver_never_blocks_or_raises(caplog):
    caplog.set_level(logging.DEBUG)

    async def main():
        stats = Stats("w1")
        step = stats.step("P", "Double")
        client = MetricsClient("127.0.0.1", closed_port(), stats, interval=INTERVAL, retry=RETRY)
        client.start()
        for _ in range(200_000):  # the hot path: plain increments, no await
            step.messages_in += 1
        await wait_until(lambda: client.attempts >= 3)
        stopping = asyncio.ensure_future(client.stop())
        done, _ = await asyncio.wait({stopping}, timeout=5)
        return stats, step, bool(done)

    stats, step, stopped = asyncio.run(main())
    assert step.messages_in == 200_000
    assert stopped
    assert stats.connections == stats.records_sent == 0
    assert [r for r in caplog.records if r.levelno >= logging.INFO] == []


def test_restarted_receiver_gets_records_again():
    async def main():
        stats = Stats("w1")
        got: list[dict] = []
        first = await serve_records("127.0.0.1", 0, got.append)
        port = first.port
        client = MetricsClient("127.0.0.1", port, stats, interval=INTERVAL, retry=RETRY)
        client.start()
        await wait_until(lambda: len(got) >= 2)
        first.close()
        await first.wait_closed()
        await wait_until(lambda: not client.connected)
        before = len(got)
        stats.pipeline("P").messages_in += 7  # counting goes on while nobody listens
        second = await serve_records("127.0.0.1", port, got.append)
        await wait_until(lambda: len(got) >= before + 2)
        await client.stop()
        second.close()
        await second.wait_closed()
        return stats, got[before:]

    stats, later = asyncio.run(main())
    assert stats.connections >= 2
    assert later[-1]["pipelines"]["P"]["messages_in"] == 7


def test_stalled_receiver_bounds_buffer_and_counts_drops():
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)  # never accepted, never read: the kernel completes the handshake anyway

    async def main():
        stats = Stats("w1")
        for i in range(60):  # a record of a dozen KiB fills the kernel buffers quickly
            stats.step("P", f"step-{i}-" + "x" * 200)
        client = MetricsClient("127.0.0.1", listener.getsockname()[1], stats, interval=0.002)
        client.start()
        peak = 0

        def sampled_drop():
            nonlocal peak
            peak = max(peak, client.buffered)
            return stats.records_dropped > 0

        await wait_until(sampled_drop, timeout=8.0)
        await client.stop()
        return stats, peak

    try:
        stats, peak = asyncio.run(main())
    finally:
        listener.close()
    assert stats.seq == stats.records_sent + stats.records_dropped  # drops leave gaps in seq
    record_size = len(encode_record(stats.snapshot()))
    assert stats.records_dropped > 0
    assert stats.records_sent > 0
    assert 0 < peak <= MAX_BUFFERED + record_size
