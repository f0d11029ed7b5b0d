"""The worker's sink connection against a real loopback receiver (machida.runtime.sink)."""

from __future__ import annotations

import asyncio
import socket
import struct

from machida.aio import wait_event
from machida.app.plan import AppPlan, Pipeline, Source
from machida.app.plan import Sink as PlanSink
from machida.runtime import sink as sink_module
from machida.runtime.flow import FlowControl, sink_reason
from machida.runtime.sink import HIGH_WATER, ExactlyOnceSink, SinkConnection, Sinks
from machida.wire import exactly_once as protocol
from machida.wire.exactly_once import (
    OutgoingSink,
    OutputRun,
    SinkDecoder,
    SinkHello,
    SinkOutputs,
    Stream,
)
from wallaroo_tools.loopback import unused_port

CHUNK = 64 * 1024


def test_output_queued_while_the_sink_is_down_unblocks_once_it_is_delivered():
    async def main():
        port = unused_port()
        blocked_calls: list[bool] = []
        unblocked, waiting = asyncio.Event(), asyncio.Event()

        def on_blocked(blocked: bool) -> None:
            blocked_calls.append(blocked)
            if not blocked:
                unblocked.set()

        def log(line: str) -> None:
            if line.startswith("Waiting for sink"):
                waiting.set()

        sink = SinkConnection("127.0.0.1", port, on_blocked, log)
        sink.start()
        assert await wait_event(waiting, 10)  # the first attempt was refused
        # Just over the high-water mark: on reconnect the kernel takes enough of it
        # that the transport never passes its own mark, so asyncio never pauses it.
        sent = b"x" * CHUNK * (HIGH_WATER // CHUNK + 1)
        for i in range(0, len(sent), CHUNK):
            sink.write(sent[i : i + CHUNK])
        assert blocked_calls == [True]

        received = bytearray()
        all_received, receiver_done = asyncio.Event(), asyncio.Event()

        async def receive(reader, writer):
            while data := await reader.read(1 << 16):
                received.extend(data)
                if len(received) >= len(sent):
                    all_received.set()
            writer.close()
            receiver_done.set()

        server = await asyncio.start_server(receive, "127.0.0.1", port)
        try:
            assert await wait_event(unblocked, 10), f"still blocked: {blocked_calls}"
            assert await wait_event(all_received, 10)
        finally:
            sink.close()
            await wait_event(receiver_done, 10)
            server.close()
            await server.wait_closed()
        return blocked_calls, bytes(received), sent

    blocked_calls, received, sent = asyncio.run(main())
    assert blocked_calls == [True, False]
    assert received == sent


def test_what_the_transport_held_when_the_connection_dropped_is_sent_again():
    """A receiver that reads nothing, then resets its connection: the writes the transport
    still held go to the next connection, whole, and the last write is among them."""

    async def main():
        lines: list[str] = []
        sink = SinkConnection("127.0.0.1", 0, lambda blocked: None, lines.append)
        accepted: asyncio.Queue = asyncio.Queue()

        async def accept(reader, writer):
            await accepted.put((reader, writer))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        sink.port = server.sockets[0].getsockname()[1]
        sink.start()
        _, first = await asyncio.wait_for(accepted.get(), 10)
        assert await wait_event(sink.connected, 10)
        frames = [i.to_bytes(4, "big") + bytes([i % 251]) * (CHUNK - 4) for i in range(64)]
        for frame in frames:  # 4 MiB into a receiver that reads nothing: the transport keeps most
            sink.write(frame)
        assert sink.buffered > 0
        assert sink._held_bytes < sink.buffered + CHUNK  # no more kept than may be needed
        sock = first.get_extra_info("socket")
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        first.close()  # a reset: what was in flight is gone
        reader, second = await asyncio.wait_for(accepted.get(), 10)
        got = bytearray()
        while not got.endswith(frames[-1]):  # without the resending, nothing ever comes
            got += await asyncio.wait_for(reader.read(1 << 20), 10)
        sink.close()
        second.close()
        server.close()
        return bytes(got), frames, lines

    got, frames, lines = asyncio.run(main())
    assert got and len(got) % CHUNK == 0  # whole writes only
    resent = [got[i : i + CHUNK] for i in range(0, len(got), CHUNK)]
    assert resent == frames[-len(resent) :]  # a tail of the writes, in order, ending at the last
    assert any("lost; reconnecting" in line for line in lines)


def test_two_full_sinks_hold_the_inputs_until_both_have_drained():
    """Each sink pauses the worker's inputs for itself: the first to drain does not reopen
    them while the other still holds more than its high mark."""
    ports = [unused_port(), unused_port()]
    source = Source("127.0.0.1", "0", None, 4)
    pipelines = tuple(
        Pipeline(name, source, (), PlanSink("127.0.0.1", str(port), None))
        for name, port in zip("AB", ports)
    )
    plan = AppPlan("app", "App", pipelines)

    async def main():
        flow = FlowControl()
        flow.open_sources()
        sinks = Sinks(plan, flow.sink_blocked)
        sinks.start()
        over = b"x" * (HIGH_WATER + CHUNK)  # queued while nothing listens: both sinks block
        sinks.write(0, over)
        sinks.write(1, over)
        assert flow.reasons == {sink_reason("A"), sink_reason("B")}
        received = asyncio.Event()

        async def drain(reader, writer):
            got = 0
            while got < len(over):
                got += len(await reader.read(1 << 20))
            received.set()
            await reader.read()  # keep the connection until the sink closes it

        server = await asyncio.start_server(drain, "127.0.0.1", ports[0])
        try:
            assert await wait_event(received, 10)
            while sinks.sinks[0].buffered:  # the transport hands the rest to the kernel
                await asyncio.sleep(0.01)
            return set(flow.reasons), flow.reading_sources
        finally:
            sinks.close()
            server.close()
            await server.wait_closed()

    reasons, reading = asyncio.run(main())
    assert reasons == {sink_reason("B")} and not reading


# -- the exactly-once sink connection ---------------------------------------------------------


class Plane:
    """The data plane as an exactly-once sink connection sees it: one stream's backlog."""

    def __init__(self, runs: list[OutputRun]) -> None:
        self.sink = OutgoingSink()
        self.sink.backlog.add(runs)

    def sink_opened(self, p: int) -> bytes:
        return self.sink.opened("worker-2")

    def sink_read(self, p: int, data: bytes):
        resend, _ = self.sink.read(data)
        return resend, self.sink.decoder.error

    def sink_ready(self, p: int) -> bool:
        return self.sink.ready


STREAM = Stream(0, 1, 7)


def test_an_exactly_once_sink_says_hello_then_sends_what_the_receiver_lacks_on_each_connection(
    monkeypatch,
):
    """A receiver that never answers is reported; one that answers gets only what it does
    not hold, on every connection; anything else it says closes the connection."""
    monkeypatch.setattr(sink_module, "HELLO_WAIT_S", 0.05)
    plane = Plane([OutputRun(STREAM, 1, [b"a", b"b", b"c"])])

    async def main():
        lines: list[str] = []
        sink = ExactlyOnceSink("127.0.0.1", 0, 0, plane, lines.append)
        accepted: asyncio.Queue = asyncio.Queue()

        async def accept(reader, writer):
            await accepted.put((reader, writer))

        server = await asyncio.start_server(accept, "127.0.0.1", 0)
        sink.port = server.sockets[0].getsockname()[1]
        sink.start()
        reader, first = await asyncio.wait_for(accepted.get(), 10)
        hello = SinkDecoder().feed(await reader.read(1 << 16))
        while not any("has not answered" in line for line in lines):
            await asyncio.sleep(0.01)
        assert not sink.connected.is_set()
        first.write(protocol.marks({STREAM: 1}))
        got = SinkDecoder().feed(await reader.read(1 << 16))
        assert await wait_event(sink.connected, 10)
        first.write(b"\x00\x00\x00\x01Z")  # not the protocol: the worker closes and comes back
        reader, second = await asyncio.wait_for(accepted.get(), 10)
        again = SinkDecoder().feed(await reader.read(1 << 16))
        second.write(protocol.marks({STREAM: 3}))
        while plane.sink.backlog.records:
            await asyncio.sleep(0.01)
        sink.close()
        server.close()
        return hello, got, again, lines

    hello, got, again, lines = asyncio.run(main())
    assert hello == [SinkHello("worker-2", [STREAM])]
    assert got == [SinkOutputs([OutputRun(STREAM, 2, [b"b", b"c"])])]
    assert again == [SinkHello("worker-2", [STREAM])]
    assert any(line.startswith("ERROR: sink connection to 127.0.0.1:") for line in lines), lines
    assert "is its receiver started with --exactly-once?" in lines[0]
