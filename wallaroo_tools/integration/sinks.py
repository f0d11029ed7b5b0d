"""The sinks of an ``integration_test`` run: listeners that keep every record the workers write.

Each ``--sinks`` address is one listener; every worker opens its own
connection to it, and each connection is split into records on its own:
``u32be N | N bytes`` frames in ``framed`` mode, lines in ``newlines`` mode (a
last line without ``\\n`` counts when its connection closes). A sink keeps its
records in arrival order and wakes whoever waits for a count. Saving writes
them as they came (``--giles-mode`` adds the giles receiver's ``u64be`` after
each length, here the record's index, which ``validator`` reads).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

from machida.wire.framing import HEADER, FrameDecoder
from wallaroo_tools.layouts import GILES_HEADER

FRAMED = "framed"
NEWLINES = "newlines"
SINK_MODES = (FRAMED, NEWLINES)


class LineSplitter:
    """Splits one connection's bytes into lines (without their ``\\n``), sans I/O."""

    def __init__(self) -> None:
        self._rest = b""

    def feed(self, data: bytes) -> list[bytes]:
        lines = (self._rest + data).split(b"\n")
        self._rest = lines.pop()
        return lines

    def close(self) -> list[bytes]:
        """The unfinished last line, if any: it counts as a record."""
        rest, self._rest = self._rest, b""
        return [rest] if rest else []


class Sink:
    """One sink address: its records, in the order they arrived, from every connection."""

    def __init__(self, index: int, mode: str) -> None:
        self.index = index
        self.mode = mode
        self.records: list[bytes] = []
        self.problems: list[str] = []
        self.port = 0
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[asyncio.BaseTransport] = set()
        self._changed = asyncio.Event()

    @property
    def count(self) -> int:
        return len(self.records)

    def add(self, records: list[bytes]) -> None:
        if records:
            self.records += records
            self._changed.set()

    def problem(self, text: str) -> None:
        self.problems.append(f"sink {self.index}: {text}")
        self._changed.set()

    async def start(self, host: str) -> None:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _SinkConnection(self), host, 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def watch(self) -> None:
        """Forget earlier news: :meth:`changed` now waits for records (or a problem) after this."""
        self._changed.clear()

    async def changed(self) -> None:
        await self._changed.wait()

    async def connections_closed(self, timeout: float) -> bool:
        """Until every worker has closed its connection (True), or ``timeout`` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            self.watch()
            if not self._transports:
                return True
            left = deadline - loop.time()
            if left <= 0:
                return False
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed(), left)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.close()

    def raw(self) -> Iterable[bytes]:
        """Each record as it was on the wire (framed) or as a line with its ``\\n``."""
        if self.mode == FRAMED:
            return (HEADER.pack(len(r)) + r for r in self.records)
        return (r + b"\n" for r in self.records)

    def save(self, path: str, giles: bool) -> None:
        """Write the records to ``path``; ``giles`` puts each record's index after its length."""
        if giles:
            data = b"".join(GILES_HEADER.pack(len(r), i) + r for i, r in enumerate(self.records))
        else:
            data = b"".join(self.raw())
        with open(path, "wb") as f:
            f.write(data)


class _SinkConnection(asyncio.Protocol):
    """One worker's connection to a sink: feeds its own splitter, hands the records on."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.framed = sink.mode == FRAMED
        self.splitter = FrameDecoder() if self.framed else LineSplitter()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.sink._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        self.sink.add(self.splitter.feed(data))
        if self.framed and self.splitter.error is not None:
            peer = self.transport.get_extra_info("peername")
            self.sink.problem(
                f"a frame of {self.splitter.error.length} bytes from {peer[0]}:{peer[1]} "
                f"is over 16 MiB, so that connection was closed (for an application that "
                f"writes lines, use --sink-mode newlines)"
            )
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.sink._transports.discard(self.transport)
        self.sink._changed.set()
        if self.framed:
            if self.splitter.pending and self.splitter.error is None:
                self.sink.problem(
                    f"a connection closed inside a frame; {self.splitter.pending} bytes discarded"
                )
        else:
            self.sink.add(self.splitter.close())
