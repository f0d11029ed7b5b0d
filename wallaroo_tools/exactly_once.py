"""The receiving end of the exactly-once sink protocol, for ``data_receiver`` and ``receiver``.

Each worker's sink connection says hello with the streams it holds output of;
:class:`Intake` answers with the marks the receiver holds durably, takes each
record that is the next of its stream (:class:`~wallaroo_tools.ledger.Holdings`),
and hands its frames to the tool, which writes them to the
:class:`~wallaroo_tools.ledger.Ledger`'s FILE. Commits are grouped: the first
read that brings something new schedules one for the end of the event loop's
turn, so the reads that arrived together share one fsync of FILE and one of
the journal. Only then are the connections acknowledged and the tool told
(``data_receiver`` prints the frames then). A connection whose bytes break the
protocol, or that would leave a gap in a stream, is closed with one ``ERROR:``
line; the others go on.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Callable, Protocol

from machida.errors import FrameError
from machida.wire import exactly_once as protocol
from machida.wire.framing import FrameDecoder
from wallaroo_tools.ledger import Holdings, Ledger

# on_frames(frames) -> the bytes FILE gets for them; on_committed(frames) once they are durable.


class Peer(Protocol):
    """A worker's connection as the intake sees it."""

    peer: str
    worker: str | None

    @property
    def named(self) -> str: ...

    def write(self, data: bytes) -> None: ...

    def abort(self) -> None: ...


OnFrames = Callable[[list[bytes]], bytes]
OnCommitted = Callable[[list[bytes]], None]
CallSoon = Callable[[Callable[[], None]], object]


class Intake:
    """The connections of an exactly-once receiver, its holdings and its commits."""

    def __init__(self, ledger: Ledger, on_frames: OnFrames, on_committed: OnCommitted,
                 on_failed: Callable[[str], None],
                 call_soon: CallSoon | None = None) -> None:  # fmt: skip
        """``call_soon(commit)`` schedules a commit (the running loop's, by default)."""
        self.ledger = ledger
        self._call_soon = call_soon
        self.holdings = Holdings(ledger.marks)
        self._on_frames, self._on_committed, self._on_failed = on_frames, on_committed, on_failed
        self.connections: set[Peer] = set()
        self._frames: list[bytes] = []  # taken, not yet durable
        self._scheduled = False
        self.failed = False

    def protocol(self) -> Connection:
        return Connection(self)

    def hello(self, conn: Peer, event: protocol.SinkHello) -> None:
        conn.worker = event.worker
        conn.write(protocol.marks(self.holdings.answer(event.streams)))

    def outputs(self, conn: Peer, runs: list[protocol.OutputRun]) -> None:
        """Take what is new of ``runs`` (FrameError on a gap or an output that is not whole
        frames); a commit follows at the end of this turn of the loop."""
        self._schedule()  # acknowledged even when all of it was held already
        holdings = self.holdings
        for run in runs:
            values = holdings.fresh(conn, run)
            if not values:
                continue
            decoder = FrameDecoder()
            frames = decoder.feed(protocol.joined(values))
            if decoder.pending or decoder.error is not None:
                raise FrameError("an output that is not whole u32be-length frames")
            self.ledger.write(self._on_frames(frames), len(frames))
            self._frames.extend(frames)
            holdings.took(run)

    def _schedule(self) -> None:
        if not self._scheduled and not self.failed:
            self._scheduled = True
            call_soon = self._call_soon or asyncio.get_running_loop().call_soon
            call_soon(self.commit)

    def commit(self) -> None:
        """FILE and the marks, durable together; then the acknowledgements, then the tool."""
        self._scheduled = False
        if self.failed:
            return
        moved = self.holdings.moved()
        if moved:
            try:
                self.ledger.commit(moved)
            except OSError as err:
                self.failed = True
                self._on_failed(f"Error: cannot write {self.ledger.path}: {err.strerror or err}")
                return
            self.holdings.committed(moved)
        for conn in list(self.connections):
            acked = self.holdings.acks(conn)
            if acked:
                conn.write(protocol.acks(acked))
        for line in self.holdings.warnings:
            print(line, file=sys.stderr, flush=True)
        self.holdings.warnings.clear()
        frames, self._frames = self._frames, []
        if frames:
            self._on_committed(frames)

    def refuse(self, conn: Peer, why: str) -> None:
        print(f"ERROR: {conn.peer}{conn.named}: {why}; connection closed", file=sys.stderr,
              flush=True)  # fmt: skip
        conn.abort()

    def close(self) -> None:
        """Commit what was taken, then close every connection and the files."""
        if self._frames or self.holdings.changed:
            self.commit()
        for conn in list(self.connections):
            conn.abort()
        self.ledger.close()


class Connection(asyncio.Protocol):
    """One worker's sink connection: feeds its decoder, hands each event to the intake."""

    def __init__(self, intake: Intake) -> None:
        self.intake = intake
        self.decoder = protocol.SinkDecoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"
        self.worker: str | None = None
        self._said_hello = False

    @property
    def named(self) -> str:
        return f" ({self.worker})" if self.worker else ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.intake.connections.add(self)

    def data_received(self, data: bytes) -> None:
        try:
            for event in self.decoder.feed(data):
                self._event(event)
        except FrameError as err:
            self.intake.refuse(self, str(err))
            return
        if self.decoder.error is not None:
            hint = "" if self._said_hello else " (is the worker started with --exactly-once?)"
            self.intake.refuse(self, f"{self.decoder.error}{hint}")

    def _event(self, event: protocol.SinkEvent) -> None:
        if isinstance(event, protocol.SinkHello) and not self._said_hello:
            self._said_hello = True
            self.intake.hello(self, event)
        elif isinstance(event, protocol.SinkOutputs) and self._said_hello:
            self.intake.outputs(self, event.runs)
        else:
            raise FrameError(f"a {type(event).__name__} from a worker at this point")

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.intake.connections.discard(self)
        self.intake.holdings.forget(self)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()
