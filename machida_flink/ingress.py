"""The ingress: where senders connect, and what keeps their input through a job's restarts.

A Flink source that listens for senders itself loses what it had read when a
task fails and restarts, and the sender's connection breaks. So machida-flink
listens in its own process, outside the job: for every pipeline it binds the
source address, cuts each connection's bytes into frames with the
application's decoder (``payload_length`` once per frame, the project's
one-line error and a closed connection for a bad length), and appends them to
that pipeline's *stream* (:mod:`machida_flink.stream`), a file in
``--resilience-dir``. The job's source reads each stream by byte offset from
the ingress's serve port and keeps the offset in its checkpoints; a restored
task asks for the stream again from there. A stream serves only what is synced
to disk, so nothing the ingress acknowledged is lost by a task or TaskManager
failure, nor by a crash of this process: a run started again reads its files
back.

The serve port answers only the job's own readers: each subscription carries
the run's random token (:attr:`Ingress.token`), and a connection without it is
closed with one line before anything else it sent is read. A reader's commits
free disk, so they are checked too (:class:`~machida_flink.ingress_log.Subscription`).

Backpressure: a stream more than :data:`~machida_flink.stream.HIGH_WATER`
bytes ahead of what its reader has been sent stops the reading of that pipeline's source connections
(the other pipelines go on), which the senders feel as TCP flow control;
reading resumes below :data:`LOW_WATER`. A disk that refuses a write stops the
whole ingress (:meth:`Ingress.record`): every sender connection is closed, and
what was recorded before is still served, so the job can drain it.
"""

from __future__ import annotations

import asyncio
import hmac
import secrets
from pathlib import Path

from machida.app.callbacks import Callbacks, label
from machida.app.plan import AppPlan
from machida.console import os_reason, warn
from machida.errors import BindError
from machida.wire.source import SourceFramer
from machida_flink import ingress_log as log
from machida_flink.stream import Stream

Address = tuple[str, int]

# Reading resumes once the reader is this close behind (stream.HIGH_WATER pauses it).
LOW_WATER = 16 * 1024 * 1024
# A job's reader subscribes as soon as it connects; anything slower is not one.
SUBSCRIBE_S = 10.0
# What ends a stream for its reader. It is sent after the last recorded entry and never
# written, so that a stream still ends when the disk refuses every further write.
END_ENTRY = log.entry(log.END, 0)


class SourceProtocol(asyncio.Protocol):
    """One sender connection: frame each read with the application's decoder, record it."""

    def __init__(self, ingress: Ingress, pipeline: int) -> None:
        self.ingress = ingress
        self.pipeline = pipeline
        source = ingress.plan.pipelines[pipeline].source
        self.framer = SourceFramer(
            source.decoder, source.header_length, label(source.decoder, "payload_length")
        )
        self.connection = ingress.next_connection()
        self.stream = ingress.streams[pipeline]
        self.peer = "?"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        if self.ingress.stopped:  # accepted just before the listener closed: the stream has ended
            transport.close()
            return
        self.ingress.sources.add(self)
        opened = log.entry(log.OPENED, self.connection, self.peer.encode())
        if self.ingress.record(self.stream, opened) and self.stream.paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        payloads = self.framer.feed(data)
        if payloads and not self.ingress.record(
            self.stream, log.frames_entry(self.connection, payloads), len(payloads)
        ):
            return
        why = self.framer.error
        if why is not None:
            name = self.ingress.plan.pipelines[self.pipeline].name
            self.ingress.callbacks.bad_frame(why.callback, why.length, name, self.peer, why.exc)
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.finish()

    def finish(self) -> None:
        """The connection is over: warn about a partial frame and record its end, once."""
        if self not in self.ingress.sources:
            return
        self.ingress.sources.discard(self)
        left = self.framer.pending
        if left and self.framer.error is None and self.ingress.failure is None:
            name = self.ingress.plan.pipelines[self.pipeline].name
            warn(f"WARNING: source connection from {self.peer} closed in the middle of a frame; "
                 f"{left} byte(s) discarded [pipeline '{name}']")  # fmt: skip
        if not self.stream.ended:
            self.ingress.record(self.stream, log.entry(log.CLOSED, self.connection))


class Ingress:
    """Every pipeline's source listener and stream, and the serve port readers use."""

    def __init__(self, plan: AppPlan, streams: list[Stream], connections: int = 0) -> None:
        """``streams`` in pipeline order; ``connections``: how many sender connections the
        run has numbered already (a resumed run goes on after them)."""
        self.plan = plan
        self.callbacks = Callbacks("ingress", "log")
        self.token = secrets.token_bytes(log.TOKEN_SIZE)
        self.sources: set[SourceProtocol] = set()
        self.opened = False  # whether senders were ever accepted
        self.stopped = False
        self.closed = False
        self.failure: OSError | None = None
        self.failed = asyncio.Event()
        # Each job the run submits is an epoch; a commit from a reader of the current one
        # means that job has completed a checkpoint (so all its tasks run).
        self.epoch = 0
        self.checkpointed = asyncio.Event()
        self.committed = asyncio.Event()  # any commit (the base of a stream may have moved)
        self._connections = connections
        self.streams = streams
        for stream in streams:
            stream.on_pressure = self._pressure
            stream.on_failure = self._fail
        self.listeners: list[asyncio.base_events.Server] = []
        self.server: asyncio.base_events.Server | None = None
        self.address: Address = ("", 0)

    def new_epoch(self) -> None:
        """A new job is about to subscribe: wait for its own first checkpoint from now on."""
        self.epoch += 1
        self.checkpointed.clear()

    def next_connection(self) -> int:
        self._connections += 1
        return self._connections

    @property
    def connections(self) -> int:
        return self._connections

    @property
    def paths(self) -> list[Path]:
        return [stream.path for stream in self.streams]

    # -- listening ---------------------------------------------------------------------------

    async def bind(self, serve: Address) -> None:
        """Bind every pipeline's source and the serve port. The sources accept nothing until
        :meth:`open_sources`. Raises :class:`BindError` with the line to print."""
        loop = asyncio.get_running_loop()
        for p, pipeline in enumerate(self.plan.pipelines):
            host, port = pipeline.source.host, pipeline.source.port
            try:
                server = await loop.create_server(
                    lambda p=p: SourceProtocol(self, p), host, int(port), start_serving=False
                )
            except (OSError, ValueError, OverflowError) as err:
                raise BindError(f"{pipeline.name} source is unable to listen on "
                                f"{host}:{port}: {os_reason(err)}") from err  # fmt: skip
            self.listeners.append(server)
        try:
            self.server = await asyncio.start_server(self._serve_reader, *serve)
        except (OSError, OverflowError) as err:
            raise BindError(f"unable to listen on {serve[0]}:{serve[1]} for the ingress "
                            f"(--ingress): {os_reason(err)}") from err  # fmt: skip
        self.address = self.server.sockets[0].getsockname()[:2]

    async def open_sources(self) -> list[str]:
        """Start accepting senders; returns the ``<pipeline> source listening on`` lines."""
        self.opened = True
        lines = []
        for server, pipeline in zip(self.listeners, self.plan.pipelines):
            await server.start_serving()
            host, port = server.sockets[0].getsockname()[:2]
            lines.append(f"{pipeline.name} source listening on {host}:{port}")
        return lines

    # -- recording ---------------------------------------------------------------------------

    def record(self, stream: Stream, data: bytes, records: int = 0) -> bool:
        """Append an entry of ``records`` frames; False once the disk has refused a write or
        a sync (then nothing more is)."""
        if self.failure is not None or self.closed:
            return False
        try:
            stream.append(data, records)
        except OSError as err:
            self._fail(stream, err)
            return False
        return True

    def close_connections(self, stream: Stream, connections: set[int]) -> None:
        """Record the end of connections a crashed run left open (its senders are gone)."""
        for connection in sorted(connections):
            self.record(stream, log.entry(log.CLOSED, connection))

    def _fail(self, stream: Stream, err: OSError) -> None:
        if self.failure is not None:
            return
        self.failure = err
        warn(f"ERROR: cannot write {stream.path}: {os_reason(err)}; the ingress stops "
             f"accepting input and closes every sender connection (that write is not "
             f"recorded; what was recorded before is still processed)")  # fmt: skip
        self.stop_sources()
        self.end_streams()
        self.failed.set()

    def _pressure(self, stream: Stream) -> None:
        if not stream.paused:
            stream.paused = True
            for source in self.sources:
                if source.stream is stream:
                    source.transport.pause_reading()

    def _relieve(self, stream: Stream) -> None:
        if stream.paused and stream.size - stream.served < LOW_WATER:
            stream.paused = False
            for source in self.sources:
                if source.stream is stream:
                    source.transport.resume_reading()

    def stop_sources(self) -> None:
        """Stop accepting and close every sender connection (complete frames are kept)."""
        self.stopped = True
        for server in self.listeners:
            server.close()
        for source in list(self.sources):
            source.finish()
            source.transport.close()

    def end_streams(self) -> None:
        """Each reader that reaches the end of what was recorded gets the end entry."""
        for stream in self.streams:
            stream.end()

    def caught_up(self) -> bool:
        """Every stream's reader has a completed checkpoint past everything recorded."""
        return all(s.base.offset == s.durable == s.size for s in self.streams)

    # -- serving -----------------------------------------------------------------------------

    async def all_subscribed(self) -> None:
        await asyncio.gather(*(stream.subscribed.wait() for stream in self.streams))

    async def _serve_reader(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        peer = writer.get_extra_info("peername")
        peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        try:
            await self._serve(reader, writer, peer)
        except (ConnectionError, OSError):
            pass  # the reader went away; a restored reader subscribes again
        except asyncio.CancelledError:
            pass  # the process is ending
        finally:
            writer.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, peer: str):
        decoder = log.RequestDecoder()
        try:
            first = await asyncio.wait_for(
                reader.readexactly(log.SUBSCRIBE_REQUEST.size), SUBSCRIBE_S
            )
        except (asyncio.IncompleteReadError, asyncio.TimeoutError):
            return _refuse(peer, "no subscription with this run's token")
        requests = decoder.feed(first)
        if not (requests and requests[0][0] == log.SUBSCRIBE
                and hmac.compare_digest(requests[0][3], self.token)):  # fmt: skip
            return _refuse(peer, "no subscription with this run's token")
        _, index, offset, _ = requests[0]
        if index >= len(self.streams):
            return _refuse(peer, f"no stream {index}")
        stream = self.streams[index]
        if not stream.base.offset <= offset <= stream.durable:
            return _refuse(peer, f"stream {index} holds offsets {stream.base.offset} to "
                                 f"{stream.durable}, not {offset}")  # fmt: skip
        stream.subscribed.set()
        subscription = log.Subscription(index, offset)
        commits = self._read_commits(reader, decoder, stream, subscription, peer, self.epoch)
        tasks = [
            asyncio.ensure_future(self._send(stream, subscription, writer)),
            asyncio.ensure_future(commits),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
        for task in done:
            task.result()

    async def _send(self, stream: Stream, subscription: log.Subscription, writer) -> None:
        while True:
            if subscription.sent < stream.durable:
                data = stream.read(subscription.sent)
                writer.write(data)
                subscription.sent += len(data)
                if subscription.sent > stream.served:
                    stream.served = subscription.sent
                    self._relieve(stream)
                await writer.drain()
            elif stream.ended and stream.durable == stream.size:
                writer.write(END_ENTRY)
                await writer.drain()
                return
            else:
                stream.grown.clear()
                await stream.grown.wait()

    async def _read_commits(self, reader, decoder, stream: Stream, subscription: log.Subscription,
                            peer: str, epoch: int) -> None:  # fmt: skip
        """A completed checkpoint no longer needs what lies before its offset: free that disk."""
        while True:
            data = await reader.read(4096)
            if not data:
                return
            for kind, _, offset, _ in decoder.feed(data):
                why = subscription.commit(kind, offset)
                if why is not None:
                    return _refuse(peer, why)
                stream.release(offset, self._connections)
                self.committed.set()
                if epoch == self.epoch:
                    self.checkpointed.set()
            if decoder.error is not None:
                return _refuse(peer, str(decoder.error))

    def close(self) -> None:
        self.closed = True
        for source in list(self.sources):
            source.transport.close()
        for server in [*self.listeners, self.server]:
            if server is not None:
                server.close()
        for stream in self.streams:
            stream.close()


def _refuse(peer: str, why: str) -> None:
    warn(f"ERROR: ingress connection from {peer}: {why}; connection closed")
