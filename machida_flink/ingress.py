"""The ingress: where senders connect, and what keeps their input through a job's restarts.

A Flink source that listens for senders itself loses what it had read when a
task fails and restarts, and the sender's connection breaks. So machida-flink
listens in its own process, outside the job: for every pipeline it binds the
source address, cuts each connection's bytes into frames with the
application's decoder (``payload_length`` once per frame, the project's
one-line error and a closed connection for a bad length), and appends them to
that pipeline's *stream*, a file in ``--resilience-dir`` (entries of
:mod:`machida_flink.ingress_log`). The job's source reads each stream by byte
offset from the ingress's serve port and keeps the offset in its checkpoints;
a restored task asks for the stream again from there. Nothing the ingress
recorded is lost by a task or TaskManager failure. The files live as long as
this process: they are not synced to disk, because nothing reads them after it.

The serve port answers only the job's own readers: each subscription carries
the run's random token (:attr:`Ingress.token`), and a connection without it is
closed with one line before anything else it sent is read. A reader's commits
free disk, so they are checked too (:class:`~machida_flink.ingress_log.Subscription`).

Backpressure: a stream more than :data:`HIGH_WATER` bytes ahead of what its
reader has been sent stops the reading of that pipeline's source connections
(the other pipelines go on), which the senders feel as TCP flow control;
reading resumes below :data:`LOW_WATER`. A disk that refuses a write stops the
whole ingress (:meth:`Ingress.record`): every sender connection is closed, and
what was recorded before is still served, so the job can drain it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import hmac
import os
import secrets
from pathlib import Path
from typing import Callable

from machida.app.callbacks import Callbacks, label
from machida.app.plan import AppPlan
from machida.console import os_reason, warn
from machida.errors import BindError
from machida.wire.source import SourceFramer
from machida_flink import ingress_log as log

Address = tuple[str, int]

# A stream may run this far ahead of its reader before the senders are paused
# (the job is starting, restarting or slower than the senders); files, not memory, hold it.
HIGH_WATER = 64 * 1024 * 1024
LOW_WATER = 16 * 1024 * 1024
# One serve read: large enough that a reader catching up gets big records.
SERVE_CHUNK = 1024 * 1024
# A job's reader subscribes as soon as it connects; anything slower is not one.
SUBSCRIBE_S = 10.0
# What ends a stream for its reader. It is sent after the last recorded entry and never
# written, so that a stream still ends when the disk refuses every further write.
END_ENTRY = log.entry(log.END, 0)
# Disk is given back in whole pages.
PAGE = 4096
_FALLOC_FL_KEEP_SIZE, _FALLOC_FL_PUNCH_HOLE = 1, 2


def punch_hole(fd: int, start: int, end: int) -> bool:
    """Deallocate ``[start, end)`` of a file, keeping its size (Linux); False if unsupported."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        fallocate = libc.fallocate
    except (OSError, AttributeError):
        return False
    fallocate.argtypes = (ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64)
    mode = _FALLOC_FL_KEEP_SIZE | _FALLOC_FL_PUNCH_HOLE
    return fallocate(fd, mode, start, end - start) == 0


class Stream:
    """One pipeline's recorded input: an append-only file, its size, and who reads it."""

    def __init__(self, path: Path, on_pressure: Callable[[Stream], None]) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.size = 0  # what was written whole; only this much is ever served
        self.served = 0  # the furthest offset sent to a reader
        self.released = 0  # disk below this offset was given back (checkpointed)
        self.ended = False
        self.paused = False
        self.subscribed = asyncio.Event()
        self.grown = asyncio.Event()
        self._on_pressure = on_pressure

    def append(self, data: bytes) -> None:
        """Write ``data`` whole after the last entry. An OSError (disk full) leaves
        :attr:`size` as it was, so a partly written entry is never served."""
        view = memoryview(data)
        done = 0
        while done < len(view):
            done += os.pwrite(self.fd, view[done:], self.size + done)
        self.size += done
        self.grown.set()
        if self.size - self.served > HIGH_WATER:
            self._on_pressure(self)

    def end(self) -> None:
        """Nothing more comes: a reader at the end gets :data:`END_ENTRY` and finishes."""
        self.ended = True
        self.grown.set()

    def release(self, offset: int) -> None:
        """Give back the disk under ``[0, offset)``; offsets and the file's size stay as they are.

        Only a completed checkpoint's offset is released, and a restore never goes back
        further than the latest completed checkpoint, so no reader asks for those bytes again.
        """
        end = min(offset, self.size) // PAGE * PAGE
        if end > self.released and self.fd >= 0 and punch_hole(self.fd, self.released, end):
            self.released = end

    def read(self, offset: int) -> bytes:
        return os.pread(self.fd, min(SERVE_CHUNK, self.size - offset), offset)

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1


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
            self.stream, log.frames_entry(self.connection, payloads)
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

    def __init__(self, plan: AppPlan, paths: list[Path]) -> None:
        self.plan = plan
        self.callbacks = Callbacks("ingress", "log")
        self.token = secrets.token_bytes(log.TOKEN_SIZE)
        self.sources: set[SourceProtocol] = set()
        self.opened = False  # whether senders were ever accepted
        self.stopped = False
        self.closed = False
        self.failure: OSError | None = None
        self.failed = asyncio.Event()
        self._connections = 0
        self.streams = [Stream(path, self._pressure) for path in paths]
        self.listeners: list[asyncio.base_events.Server] = []
        self.server: asyncio.base_events.Server | None = None
        self.address: Address = ("", 0)

    def next_connection(self) -> int:
        self._connections += 1
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

    def record(self, stream: Stream, data: bytes) -> bool:
        """Append an entry; False once the disk has refused a write (then nothing more is)."""
        if self.failure is not None or self.closed:
            return False
        try:
            stream.append(data)
        except OSError as err:
            self.failure = err
            warn(f"ERROR: cannot write {stream.path}: {os_reason(err)}; the ingress stops "
                 f"accepting input and closes every sender connection (that write is not "
                 f"recorded; what was recorded before is still processed)")  # fmt: skip
            self.stop_sources()
            self.failed.set()
            return False
        return True

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
        """Stop accepting and close every sender connection; each stream then ends."""
        self.stopped = True
        for server in self.listeners:
            server.close()
        for source in list(self.sources):
            source.finish()
            source.transport.close()
        for stream in self.streams:
            stream.end()

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
        if not stream.released <= offset <= stream.size:
            return _refuse(peer, f"stream {index} holds offsets {stream.released} to "
                                 f"{stream.size}, not {offset}")  # fmt: skip
        stream.subscribed.set()
        subscription = log.Subscription(index, offset)
        tasks = [
            asyncio.ensure_future(self._send(stream, subscription, writer)),
            asyncio.ensure_future(self._read_commits(reader, decoder, stream, subscription, peer)),
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
            if subscription.sent < stream.size:
                data = stream.read(subscription.sent)
                writer.write(data)
                subscription.sent += len(data)
                if subscription.sent > stream.served:
                    stream.served = subscription.sent
                    self._relieve(stream)
                await writer.drain()
            elif stream.ended:
                writer.write(END_ENTRY)
                await writer.drain()
                return
            else:
                stream.grown.clear()
                await stream.grown.wait()

    async def _read_commits(self, reader, decoder, stream: Stream,
                            subscription: log.Subscription, peer: str) -> None:  # fmt: skip
        """A completed checkpoint no longer needs what lies before its offset: free that disk."""
        while True:
            data = await reader.read(4096)
            if not data:
                return
            for kind, _, offset, _ in decoder.feed(data):
                why = subscription.commit(kind, offset)
                if why is not None:
                    return _refuse(peer, why)
                stream.release(offset)
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
