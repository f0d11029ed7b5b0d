"""machida-flink's ingress on its own: real loopback sockets, no JVM.

The ingress runs in this process's event loop; senders and readers are real
TCP connections to it. A reader here plays the job's Java source: it
subscribes with the run's token and commits offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct

import pytest
from test_resilience import small_disk

from machida.app.loader import load_plan
from machida_flink import ingress as ingress_module
from machida_flink import ingress_log as log
from machida_flink import stream as stream_module
from machida_flink.ingress import END_ENTRY, Ingress
from machida_flink.stream import Stream

DEADLINE = 30.0

TWO_PIPELINES = """
import struct
import wallaroo

class D(object):
    def header_length(self): return 4
    def payload_length(self, b): return struct.unpack(">I", b)[0]
    def decode(self, b): return b
class E(object):
    def encode(self, d): return d
class C(object):
    def compute(self, d): return d

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("two")
    ab.new_pipeline("one", wallaroo.TCPSourceConfig("127.0.0.1", "0", D())).to(C)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "9", E()))
    ab.new_pipeline("two", wallaroo.TCPSourceConfig("127.0.0.1", "0", D())).to(C)
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "9", E()))
    return ab.build()
"""


def frames(count: int, size: int = 100) -> bytes:
    return b"".join(struct.pack(">I", size) + bytes([i % 256]) * size for i in range(count))


def subscribe(stream: int, offset: int, token: bytes) -> bytes:
    return log.SUBSCRIBE_REQUEST.pack(log.SUBSCRIBE, stream, offset, token)


def commit(offset: int) -> bytes:
    return log.COMMIT_REQUEST.pack(log.COMMIT, offset)


@pytest.fixture
def plan(make_app):
    _, plan = load_plan(make_app(TWO_PIPELINES), ["two"])
    return plan


async def started(plan, directory) -> Ingress:
    paths = [directory / f"s-{p}.ingress" for p in range(len(plan.pipelines))]
    ingress = Ingress(plan, [Stream.create(path) for path in paths])
    await ingress.bind(("127.0.0.1", 0))
    await ingress.open_sources()
    return ingress


def source_port(ingress: Ingress, p: int) -> int:
    return ingress.listeners[p].sockets[0].getsockname()[1]


async def grown_to(stream, size: int) -> None:
    async def wait() -> None:
        while stream.size < size:
            stream.grown.clear()
            await stream.grown.wait()

    await asyncio.wait_for(wait(), DEADLINE)


async def send(ingress: Ingress, p: int, data: bytes) -> asyncio.StreamWriter:
    """A sender on pipeline p that wrote ``data`` and stays connected; waits until recorded."""
    stream = ingress.streams[p]
    before = stream.size
    _, writer = await asyncio.open_connection("127.0.0.1", source_port(ingress, p))
    writer.write(data)
    await writer.drain()
    await grown_to(stream, before + len(data))
    return writer


def test_a_stranger_without_the_token_is_refused_and_reads_nothing(plan, tmp_path, capsys):
    async def scenario() -> tuple[bytes, bytes, bytes]:
        ingress = await started(plan, tmp_path)
        sender = await send(ingress, 0, frames(10))
        stream = ingress.streams[0]
        wrong = bytes(log.TOKEN_SIZE)
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(subscribe(0, 0, wrong) + commit(stream.size))
        stranger = await asyncio.wait_for(reader.read(), DEADLINE)
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" + bytes(log.SUBSCRIBE_REQUEST.size))
        web = await asyncio.wait_for(reader.read(), DEADLINE)
        assert not stream.subscribed.is_set() and stream.served == 0
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(subscribe(0, 0, ingress.token))
        got = await asyncio.wait_for(reader.readexactly(stream.size), DEADLINE)
        assert stream.subscribed.is_set() and stream.served == stream.size
        sender.close()
        ingress.close()
        return stranger, web, got

    stranger, web, got = asyncio.run(scenario())
    assert stranger == b"" and web == b""
    assert (tmp_path / "s-0.ingress").read_bytes() == got
    refusals = capsys.readouterr().err.splitlines()
    assert len(refusals) == 2, refusals
    for line in refusals:
        assert re.fullmatch(r"ERROR: ingress connection from 127\.0\.0\.1:\d+: no subscription "
                            r"with this run's token; connection closed", line), line  # fmt: skip


@pytest.mark.parametrize(
    ("commits", "why"),
    [
        ([8192, 4096], "commit 4096 goes back from 8192"),
        ([1 << 40], f"commit {1 << 40} is beyond the"),
    ],
)
def test_a_bad_commit_is_refused_and_frees_nothing_more(plan, tmp_path, capsys, commits, why):
    async def scenario() -> tuple[int, bytes]:
        ingress = await started(plan, tmp_path)
        sender = await send(ingress, 0, frames(200))
        stream = ingress.streams[0]
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(subscribe(0, 0, ingress.token))
        await asyncio.wait_for(reader.readexactly(stream.size), DEADLINE)
        for offset in commits:
            writer.write(commit(offset))
        rest = await asyncio.wait_for(reader.read(), DEADLINE)  # closed by the ingress
        released = stream.released
        sender.close()
        ingress.close()
        return released, rest

    released, rest = asyncio.run(scenario())
    assert rest == b""
    assert released == (8192 if commits[0] == 8192 else 0)
    err = capsys.readouterr().err
    assert re.fullmatch(rf"ERROR: ingress connection from 127\.0\.0\.1:\d+: {why}.*; "
                        rf"connection closed\n", err), err  # fmt: skip


def test_a_reader_gets_the_end_after_the_last_entry(plan, tmp_path):
    async def scenario() -> tuple[bytes, int]:
        ingress = await started(plan, tmp_path)
        await send(ingress, 0, frames(5))
        ingress.stop_sources()
        ingress.end_streams()
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(subscribe(0, 0, ingress.token))
        got = await asyncio.wait_for(reader.read(), DEADLINE)
        size = ingress.streams[0].size
        ingress.close()
        return got, size

    got, size = asyncio.run(scenario())
    assert got[size:] == END_ENTRY and len(got) == size + len(END_ENTRY)
    kinds = [kind for kind, _, _ in log.split_entries(got)]
    assert kinds == [log.OPENED, log.FRAMES, log.CLOSED, log.END]


def test_a_connection_accepted_as_the_stream_ends_is_closed_unrecorded(plan, tmp_path):
    async def scenario() -> tuple[bytes, int, int]:
        ingress = await started(plan, tmp_path)
        ingress.stop_sources()
        size = ingress.streams[0].size
        ours, theirs = socket.socketpair()
        loop = asyncio.get_running_loop()
        # what the listener hands over when a connection was accepted before it closed
        await loop.connect_accepted_socket(lambda: ingress_module.SourceProtocol(ingress, 0), ours)
        theirs.setblocking(False)
        got = await asyncio.wait_for(loop.sock_recv(theirs, 100), DEADLINE)
        theirs.close()
        ingress.close()
        return got, size, ingress.streams[0].size

    got, before, after = asyncio.run(scenario())
    assert got == b"" and after == before


def test_backpressure_pauses_only_the_pipeline_that_is_ahead(plan, tmp_path, monkeypatch):
    monkeypatch.setattr(stream_module, "HIGH_WATER", 64 * 1024)
    monkeypatch.setattr(ingress_module, "LOW_WATER", 16 * 1024)

    async def scenario() -> list[tuple[bool, bool]]:
        ingress = await started(plan, tmp_path)
        senders = [await send(ingress, p, frames(10)) for p in (0, 1)]
        await send(ingress, 0, frames(1000))  # 104 KB ahead of a reader that is not there

        def reading() -> tuple[bool, bool]:
            by_pipeline = {s.pipeline: s.transport.is_reading() for s in ingress.sources}
            return all(v for p, v in by_pipeline.items() if p == 0), by_pipeline[1]

        states = [reading()]
        reader, writer = await asyncio.open_connection(*ingress.address)
        writer.write(subscribe(0, 0, ingress.token))
        await asyncio.wait_for(reader.readexactly(ingress.streams[0].size), DEADLINE)
        states.append(reading())
        for sender in senders:
            sender.close()
        ingress.close()
        return states

    paused, resumed = asyncio.run(scenario())
    assert paused == (False, True), "pipeline one paused, pipeline two still reading"
    assert resumed == (True, True)


def test_a_full_disk_stops_the_ingress_and_serves_only_what_was_written(plan, tmp_path, capsys):
    with small_disk(tmp_path / "disk", "256k") as disk:

        async def scenario() -> tuple[bytes, int, bool]:
            ingress = await started(plan, disk)
            stream = ingress.streams[0]
            reader, writer = await asyncio.open_connection("127.0.0.1", source_port(ingress, 0))
            port = source_port(ingress, 0)
            for _ in range(100):  # 1 MB into 256 KB; the ingress closes the connection
                try:
                    writer.write(frames(100))
                    await writer.drain()
                except ConnectionError:
                    break
                if ingress.failed.is_set():
                    break
            await asyncio.wait_for(ingress.failed.wait(), DEADLINE)
            with contextlib.suppress(ConnectionResetError):  # closed with data unread: a reset
                assert await asyncio.wait_for(reader.read(), DEADLINE) == b""
            try:
                await asyncio.open_connection("127.0.0.1", port)
                accepting = True
            except ConnectionError:
                accepting = False
            r, w = await asyncio.open_connection(*ingress.address)
            w.write(subscribe(0, 0, ingress.token))
            served = await asyncio.wait_for(r.read(), DEADLINE)
            size = stream.size
            ingress.close()
            return served, size, accepting

        served, size, accepting = asyncio.run(scenario())
        on_disk = (disk / "s-0.ingress").read_bytes()
    assert not accepting, "the source still accepts senders after the disk refused a write"
    assert 0 < size <= len(on_disk) and served == on_disk[:size] + END_ENTRY
    assert log.split_entries(served)[-1][0] == log.END  # whole entries only
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"ERROR: cannot write {disk}/s-0.ingress: "
                                               f"No space left on device; "), err  # fmt: skip
