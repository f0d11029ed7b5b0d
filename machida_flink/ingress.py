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
accepted is lost by a task or TaskManager failure.

Backpressure: a stream more than :data:`HIGH_WATER` bytes ahead of what its
reader has been sent stops the reading of that pipeline's source connections,
which the senders feel as TCP flow control; reading resumes below
:data:`LOW_WATER`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import sys
import threading
from pathlib import Path
from typing import Callable

from machida.app.callbacks import Callbacks
from machida.app.plan import AppPlan
from machida.wire.source import SourceFramer
from machida_flink import ingress_log as log

# A stream may run this far ahead of its reader before the senders are paused
# (the job is starting, restarting or slower than the senders); files, not memory, hold it.
HIGH_WATER = 64 * 1024 * 1024
LOW_WATER = 16 * 1024 * 1024
# One serve read: large enough that a reader catching up gets big records.
SERVE_CHUNK = 1024 * 1024
# Durable against a machine crash within this long (one fdatasync per period with new data).
SYNC_EVERY_S = 0.2
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

    def __init__(self, index: int, path: Path, on_pressure: Callable[[], None]) -> None:
        self.index = index
        self.path = path
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
        self.size = 0
        self.synced = 0
        self.served = 0  # the furthest offset sent to a reader
        self.released = 0  # disk below this offset was given back (checkpointed)
        self.ended = False
        self.subscribed = asyncio.Event()
        self.grown = asyncio.Event()
        self._on_pressure = on_pressure

    def append(self, data: bytes) -> None:
        os.write(self.fd, data)
        self.size += len(data)
        self.grown.set()
        if self.size - self.served > HIGH_WATER:
            self._on_pressure()

    def end(self) -> None:
        if not self.ended:
            self.append(log.entry(log.END, 0))
            self.ended = True

    def release(self, offset: int) -> None:
        """Give back the disk under ``[0, offset)``; offsets and the file's size stay as they are.

        Only a completed checkpoint's offset is released, and a restore never goes back
        further than the latest completed checkpoint, so no reader asks for those bytes again.
        """
        end = min(offset, self.synced) // PAGE * PAGE
        if end > self.released and self.fd >= 0 and punch_hole(self.fd, self.released, end):
            self.released = end

    def read(self, offset: int) -> bytes:
        return os.pread(self.fd, min(SERVE_CHUNK, self.size - offset), offset)

    def sync(self) -> None:
        if self.synced != self.size and self.fd >= 0:
            size = self.size
            os.fdatasync(self.fd)
            self.synced = size

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
        self.framer = SourceFramer(source.decoder, source.header_length)
        self.connection = ingress.next_connection()
        self.stream = ingress.streams[pipeline]
        self.peer = "?"
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.peer = f"{peer[0]}:{peer[1]}" if peer else "?"
        self.ingress.sources.add(self)
        self.stream.append(log.entry(log.OPENED, self.connection, self.peer.encode()))
        if self.ingress.paused:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        payloads = self.framer.feed(data)
        if payloads:
            self.stream.append(log.frames_entry(self.connection, payloads))
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
        if left and self.framer.error is None:
            name = self.ingress.plan.pipelines[self.pipeline].name
            print(
                f"WARNING: source connection from {self.peer} closed in the middle of a frame; "
                f"{left} byte(s) discarded [pipeline '{name}']",
                file=sys.stderr,
                flush=True,
            )
        if not self.stream.ended:
            self.stream.append(log.entry(log.CLOSED, self.connection))


class Ingress:
    """Every pipeline's source listener and stream, and the serve port readers use."""

    def __init__(self, plan: AppPlan, directory: Path, prefix: str) -> None:
        self.plan = plan
        self.callbacks = Callbacks("ingress", "log")
        self.sources: set[SourceProtocol] = set()
        self.paused = False
        self._connections = 0
        self.streams = [
            Stream(i, directory / f"{prefix}-{i}.ingress", self._pressure)
            for i in range(len(plan.pipelines))
        ]
        self.listeners: list[asyncio.base_events.Server] = []
        self.server: asyncio.base_events.Server | None = None
        self.address: tuple[str, int] = ("", 0)
        self._stop_sync = threading.Event()
        self._syncer = threading.Thread(target=self._sync_loop, name="ingress-sync", daemon=True)

    def next_connection(self) -> int:
        self._connections += 1
        return self._connections

    @property
    def paths(self) -> list[Path]:
        return [stream.path for stream in self.streams]

    async def listen_sources(self) -> list[str]:
        """Bind every pipeline's source; returns the ``<pipeline> source listening ...`` lines.

        A source that cannot bind raises OSError with ``<pipeline> source is unable to listen``.
        """
        loop = asyncio.get_running_loop()
        lines = []
        for p, pipeline in enumerate(self.plan.pipelines):
            source = pipeline.source
            try:
                server = await loop.create_server(
                    lambda p=p: SourceProtocol(self, p), source.host, int(source.port)
                )
            except (OSError, ValueError) as err:
                raise OSError(f"{pipeline.name} source is unable to listen: {err}") from err
            self.listeners.append(server)
            host, port = server.sockets[0].getsockname()[:2]
            lines.append(f"{pipeline.name} source listening on {host}:{port}")
        self._syncer.start()
        return lines

    async def serve(self, host: str, port: int) -> tuple[str, int]:
        """Open the port the job's readers subscribe on; returns its real address."""
        self.server = await asyncio.start_server(self._serve_reader, host, port)
        self.address = self.server.sockets[0].getsockname()[:2]
        return self.address

    async def all_subscribed(self) -> None:
        await asyncio.gather(*(stream.subscribed.wait() for stream in self.streams))

    async def _serve_reader(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        decoder = log.RequestDecoder()
        try:
            first = await reader.readexactly(log.SUBSCRIBE_REQUEST.size)
            requests = decoder.feed(first)
            if not requests or requests[0][0] != log.SUBSCRIBE:
                return self._refuse(writer, f"expected a subscription, got {first!r}")
            _, index, offset = requests[0]
            if index >= len(self.streams) or offset > self.streams[index].size:
                return self._refuse(writer, f"no stream {index} at offset {offset}")
            stream = self.streams[index]
            stream.subscribed.set()
            commits = asyncio.ensure_future(self._read_commits(reader, decoder, writer, stream))
            try:
                await self._send(stream, offset, writer)
            finally:
                commits.cancel()
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    def _refuse(self, writer: asyncio.StreamWriter, why: str) -> None:
        peer = writer.get_extra_info("peername")
        print(f"ERROR: ingress reader {peer}: {why}; connection closed", file=sys.stderr)

    async def _send(self, stream: Stream, offset: int, writer: asyncio.StreamWriter) -> None:
        while True:
            if offset < stream.size:
                data = stream.read(offset)
                writer.write(data)
                offset += len(data)
                stream.served = max(stream.served, offset)
                self._relieve()
                await writer.drain()
            elif stream.ended:
                await writer.drain()
                return
            else:
                stream.grown.clear()
                await stream.grown.wait()

    async def _read_commits(self, reader, decoder, writer, stream: Stream) -> None:
        """A completed checkpoint no longer needs what lies before its offset: free that disk."""
        while True:
            data = await reader.read(4096)
            if not data:
                return
            for kind, _, offset in decoder.feed(data):
                if kind == log.COMMIT:
                    stream.release(offset)
            if decoder.error is not None:
                self._refuse(writer, str(decoder.error))
                writer.close()
                return

    def _pressure(self) -> None:
        if not self.paused:
            self.paused = True
            for source in self.sources:
                source.transport.pause_reading()

    def _relieve(self) -> None:
        if self.paused and all(s.size - s.served < LOW_WATER for s in self.streams):
            self.paused = False
            for source in self.sources:
                source.transport.resume_reading()

    def stop_sources(self) -> None:
        """Stop accepting and close every sender connection; each stream then ends."""
        for server in self.listeners:
            server.close()
        for source in list(self.sources):
            source.finish()
            source.transport.close()
        for stream in self.streams:
            stream.end()
            stream.sync()

    def _sync_loop(self) -> None:
        while not self._stop_sync.wait(SYNC_EVERY_S):
            for stream in self.streams:
                with contextlib.suppress(OSError):
                    stream.sync()

    def close(self) -> None:
        self._stop_sync.set()
        for server in [*self.listeners, self.server]:
            if server is not None:
                server.close()
        for stream in self.streams:
            stream.close()
