"""A recorded stream on its own: real files, fsync and holes, no sockets, no JVM.

What a stream promises: it serves only what is synced; the base written next to
it is on disk before the disk under it is given back; and a run started again
after a crash reads it back from the base, knowing every frame it ever accepted
and which connections it left open, with a torn tail cut off.
"""

from __future__ import annotations

import asyncio
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida_flink import ingress_log as log
from machida_flink.stream import Base, Stream, base_path, punch_hole, read_base

entries = st.lists(
    st.one_of(
        st.tuples(st.just(log.OPENED), st.integers(1, 9), st.just([b"127.0.0.1:1"])),
        st.tuples(st.just(log.FRAMES), st.integers(1, 9), st.lists(st.binary(max_size=30))),
        st.tuples(st.just(log.CLOSED), st.integers(1, 9), st.just([])),
    ),
    max_size=30,
)


def encode(kind: int, connection: int, frames: list[bytes]) -> bytes:
    if kind == log.FRAMES:
        return log.frames_entry(connection, frames)
    return log.entry(kind, connection, frames[0] if frames else b"")


def expected_walk(items) -> tuple[int, set, int, list]:
    records, still_open, last, marks, offset = 0, set(), 0, [], 0
    for kind, connection, frames in items:
        offset += len(encode(kind, connection, frames))
        if kind == log.FRAMES:
            records += len(frames)
            marks.append((offset, records))
        if kind == log.CLOSED:
            still_open.discard(connection)
        else:
            still_open.add(connection)
        last = max(last, connection)
    return records, still_open, last, marks


@given(entries, st.data())
def test_a_scan_finds_the_same_in_any_reads(items, data):
    stream = b"".join(encode(*item) for item in items)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=6)))
    scanner = log.Scanner()
    for start, stop in zip([0, *cuts], [*cuts, len(stream)]):
        scanner.feed(stream[start:stop])
    records, still_open, last, marks = expected_walk(items)
    assert (scanner.offset, scanner.records, scanner.pending) == (len(stream), records, 0)
    assert (scanner.open, scanner.last_connection, scanner.marks) == (still_open, last, marks)
    assert scanner.error is None


@given(entries, st.data())
def test_a_scan_stops_at_a_torn_tail(items, data):
    stream = b"".join(encode(*item) for item in items) + log.frames_entry(1, [b"x" * 40])
    cut = data.draw(st.integers(len(stream) - 52, len(stream) - 1))
    scanner = log.Scanner(1000, 7)
    scanner.feed(stream[:cut])
    assert scanner.offset == 1000 + len(stream) - 53 and scanner.pending == cut - len(stream) + 53
    assert scanner.records == 7 + expected_walk(items)[0]


def test_a_scan_stops_at_bytes_no_entry_starts_with():
    good = log.frames_entry(3, [b"ab", b"c"])
    scanner = log.Scanner()
    scanner.feed(good + bytes(20) + good)
    assert (scanner.offset, scanner.records, scanner.pending) == (len(good), 2, 20 + len(good))
    assert "no entry can start at offset" in str(scanner.error)
    broken = log.entry(log.FRAMES, 3, b"\x00\x00\x00\x09ab")  # a 9-byte frame holding 2
    scanner = log.Scanner()
    scanner.feed(broken)
    assert scanner.offset == 0 and "ends inside a frame" in str(scanner.error)


def run(coroutine):
    return asyncio.run(coroutine)


async def synced(stream: Stream) -> None:
    async def wait() -> None:
        while stream.durable < stream.size:
            stream.grown.clear()
            await stream.grown.wait()

    await asyncio.wait_for(wait(), 30)


def test_only_what_is_synced_is_served(tmp_path):
    async def scenario() -> tuple[int, bytes, int, bytes]:
        stream = Stream.create(tmp_path / "s.ingress")
        entry = log.frames_entry(1, [b"abc"])
        stream.append(entry, 1)
        before = (stream.durable, stream.read(0))  # the sync runs in the stream's thread
        await synced(stream)
        after = (stream.durable, stream.read(0))
        stream.close()
        return (*before, *after)

    durable_before, read_before, durable_after, read_after = run(scenario())
    assert (durable_before, read_before) == (0, b"")
    entry = log.frames_entry(1, [b"abc"])
    assert (durable_after, read_after) == (len(entry), entry)


def recorded(tmp_path, connections: list[tuple[int, int]]) -> tuple[Stream, list[int]]:
    """A stream with, per (connection, frames) pair, an OPENED entry and a FRAMES entry;
    returns it (synced) and the offset after each FRAMES entry."""
    stream = Stream.create(tmp_path / "s.ingress")
    ends = []
    for connection, count in connections:
        stream.append(log.entry(log.OPENED, connection, b"127.0.0.1:9"))
        payloads = [n.to_bytes(8, "big") for n in range(count)]
        stream.append(log.frames_entry(connection, payloads), count)
        ends.append(stream.size)
    return stream, ends


def test_a_release_moves_the_base_before_giving_the_disk_back(tmp_path):
    probe = tmp_path / "probe"
    probe.write_bytes(b"\1" * 8192)
    fd = os.open(probe, os.O_RDWR)
    try:
        if not punch_hole(fd, 0, 4096):
            pytest.skip(f"the file system of {tmp_path} cannot punch holes (fallocate)")
    finally:
        os.close(fd)

    async def scenario() -> tuple[Stream, list[int], int]:
        stream, ends = recorded(tmp_path, [(1, 5000), (2, 70_000), (3, 10)])
        await synced(stream)
        os.fsync(stream.fd)
        blocks = os.stat(stream.path).st_blocks
        stream.release(ends[1], connections=3)
        stream.close()  # waits for the stream's thread: the base, then the hole
        return stream, ends, blocks

    stream, ends, blocks = run(scenario())
    assert read_base(stream.path) == Base(ends[1], 75_000, 3)
    assert stream.released == ends[1] // 4096 * 4096
    assert os.stat(stream.path).st_size == ends[2]
    assert os.stat(stream.path).st_blocks < blocks
    with open(stream.path, "rb") as f:
        assert f.read(4096) == bytes(4096)  # given back: reads as zeros


def test_a_resumed_stream_knows_every_frame_it_accepted_and_who_left_it_open(tmp_path, capsys):
    async def first_run() -> list[int]:
        stream, ends = recorded(tmp_path, [(1, 30), (2, 40), (3, 5)])
        stream.append(log.entry(log.CLOSED, 1))
        await synced(stream)
        stream.release(ends[0], connections=3)
        stream.close()
        return ends

    ends = run(first_run())
    with open(tmp_path / "s.ingress", "ab") as f:  # a write the crash cut short
        f.write(log.frames_entry(3, [b"12345678"] * 4)[:-5])

    async def second_run() -> tuple[Stream, log.Scanner]:
        stream, scanner = Stream.resume(tmp_path / "s.ingress")
        stream.close()
        return stream, scanner

    stream, scanner = run(second_run())
    assert stream.records == 75 and scanner.open == {2, 3} and scanner.last_connection == 3
    assert stream.size == stream.durable == ends[2] + len(log.entry(log.CLOSED, 1))
    assert os.stat(stream.path).st_size == stream.size, "the torn tail is cut off"
    assert stream.records_at(ends[1]) == 70 and stream.records_at(ends[0]) == 30
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"WARNING: {stream.path}: 52 byte(s) from offset")
    assert err[0].endswith("they were never acknowledged and are dropped"), err


def test_a_stream_created_at_a_savepoints_offset_goes_on_from_there(tmp_path):
    async def scenario() -> tuple[Stream, Stream]:
        stream = Stream.create(tmp_path / "s.ingress", Base(123_456, 999, 12))
        stream.append(log.frames_entry(13, [b"x"]), 1)
        await synced(stream)
        stream.close()
        again, _ = Stream.resume(tmp_path / "s.ingress")
        again.close()
        return stream, again

    stream, again = run(scenario())
    assert os.stat(stream.path).st_size == 123_456 + len(log.frames_entry(13, [b"x"]))
    assert (again.base, again.records, again.size) == (Base(123_456, 999, 12), 1000, stream.size)
    assert base_path(stream.path).exists()
