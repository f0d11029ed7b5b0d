"""``data_receiver``: the sink end of a Wallaroo pipeline, printed to stdout.

Workers connect to it with their ``--out`` connection and write their sink
stream. Without ``--framed`` every chunk received is copied to stdout
unchanged. With ``--framed`` each connection is split into
``u32be N | N bytes`` frames and each payload is printed as one line, so
sequence_window output reads ``[0,0,0,1]``, ``[0,0,0,2]``, ... ready for the
validator. Frames longer than 16 MiB close that connection with an ``ERROR:``
line and a partial frame at close gives a ``WARNING:`` line, both on stderr;
other connections carry on. stdout is flushed at least every 100 ms while data
flows, and SIGTERM or SIGINT flushes and exits 0; a second signal kills.

Two extensions, compatible with the Pony tool's command line:

* ``--expect N`` exits 0 once N frames (with ``--framed``; bytes without it)
  have been received, after writing and flushing everything received so far.
  Frames that came in the same read as the N-th are written too, never dropped.
* ``--output FILE`` (needs ``--framed``) also writes every frame to FILE in the
  giles receiver layout ``u32be L | u64be ts | L payload bytes``, where ts is
  the wall-clock time in nanoseconds at which the read holding the frame
  arrived. It is written whether or not ``--no-write`` is given.

With ``--exactly-once`` (which needs ``--framed`` and ``--output FILE``) it
is the receiving end of the exactly-once sink protocol of workers started with
``--exactly-once`` (:mod:`.exactly_once`): each output is taken once, FILE
and its marks (``FILE.marks``) are made durable together before anything is
acknowledged, and a restart with the same command, even after a kill -9,
carries on where FILE ends. stdout gets each frame once it is durable.

The socket side is asyncio Protocols that only feed a per-connection
:class:`~machida.wire.framing.FrameDecoder` and hand each read's frames, all at
once, to one :class:`Receiver`; lines therefore never interleave.
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from machida.options import Option, OptionParser, UsageError, parse_host_port, run_cli
from machida.wire.framing import FrameDecoder
from wallaroo_tools.exactly_once import Intake
from wallaroo_tools.layouts import GILES_HEADER
from wallaroo_tools.ledger import Ledger, LedgerError

USAGE = (
    "Usage: data_receiver --listen HOST:PORT [--framed] [--no-write] [--expect N] [--output FILE]"
    " [--exactly-once]"
)

OPTIONS = [
    Option("listen", "l", metavar="HOST:PORT", help="address to listen on (required)"),
    Option("framed", "f", kind="flag", help="read u32be-length frames; print one per line"),
    Option("no-write", "n", kind="flag", help="parse, but print nothing after the listen line"),
    Option("expect", kind="int", minimum=1, metavar="N", help="exit 0 after N frames"),
    Option("output", metavar="FILE", help="also write frames to FILE (giles layout)"),
    Option(
        "exactly-once",
        kind="flag",
        help="take workers' numbered output once each, FILE durable (needs --output)",
    ),
    Option("help", "h", kind="flag", help="show this help"),
]

# The spec's bound on how stale stdout may be while data flows.
FLUSH_INTERVAL = 0.1
# Flush early past this many buffered bytes, so memory stays bounded when a
# fast sender outruns the 100 ms timer; stdout's own pace then throttles reads.
FLUSH_BYTES = 1 << 20


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    framed: bool
    write: bool
    expect: int | None
    output: str | None
    exactly_once: bool = False


class Output:
    """A buffered binary stream flushed at least every :data:`FLUSH_INTERVAL`."""

    def __init__(self, stream: BinaryIO, loop: asyncio.AbstractEventLoop, on_broken) -> None:
        self._stream = stream
        self._loop = loop
        self._on_broken = on_broken
        self._chunks: list[bytes] = []
        self._size = 0
        self._timer: asyncio.TimerHandle | None = None

    def write(self, data: bytes) -> None:
        self._chunks.append(data)
        self._size += len(data)
        if self._size >= FLUSH_BYTES:
            self.flush()
        elif self._timer is None:
            self._timer = self._loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        data = b"".join(self._chunks)
        self._chunks.clear()
        self._size = 0
        try:
            self._stream.write(data)
            self._stream.flush()
        except (BrokenPipeError, ValueError):
            # The reader went away (or the stream is closed): stop rather than
            # raise inside a socket callback, where asyncio would only log it.
            self._on_broken()


class Receiver:
    """Everything the connections share: outputs, the frame count, the stop signal."""

    def __init__(
        self, config: Config, stdout: Output, giles: Output | None, stopped: asyncio.Future[int]
    ) -> None:
        self.config = config
        self.stdout = stdout
        self.giles = giles
        self.count = 0
        self.stopping = False
        self.stopped = stopped
        self.connections: set[asyncio.Transport] = set()

    def frames(self, frames: list[bytes]) -> None:
        """One read's complete frames, printed as whole lines in one write."""
        if self.config.write:
            self.stdout.write(b"\n".join([*frames, b""]))  # one copy of the bytes, not two
        if self.giles is not None:
            ts = time.time_ns()
            pack = GILES_HEADER.pack
            self.giles.write(b"".join([pack(len(f), ts) + f for f in frames]))
        self._count(len(frames))

    def chunk(self, data: bytes) -> None:
        """Streaming mode: bytes go out as they came."""
        if self.config.write:
            self.stdout.write(data)
        self._count(len(data))

    def _count(self, n: int) -> None:
        self.count += n
        if self.config.expect is not None and self.count >= self.config.expect:
            self.stop(0)

    def report(self, line: str) -> None:
        """A problem with one connection; stderr, never mixed into stdout's lines."""
        if not self.stopping:
            print(line, file=sys.stderr, flush=True)

    def stop(self, code: int) -> None:
        if not self.stopped.done():
            self.stopped.set_result(code)


class ReceiverProtocol(asyncio.Protocol):
    """One sink connection: feeds its own decoder and hands the frames on."""

    def __init__(self, receiver: Receiver) -> None:
        self.receiver = receiver
        self.decoder = FrameDecoder() if receiver.config.framed else None
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.receiver.connections.add(self.transport)

    def data_received(self, data: bytes) -> None:
        decoder = self.decoder
        if decoder is None:
            self.receiver.chunk(data)
            return
        frames = decoder.feed(data)
        if frames:
            self.receiver.frames(frames)
        if decoder.error is not None:
            length = decoder.error.length
            self.receiver.report(f"ERROR: {self.peer}: frame length {length} exceeds 16 MiB")
            self.transport.abort()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.receiver.connections.discard(self.transport)
        if self.decoder is not None and self.decoder.pending:
            self.receiver.report(
                f"WARNING: {self.peer}: connection closed inside a frame; "
                f"discarded {self.decoder.pending} bytes"
            )


def parse_config(argv: list[str]) -> Config | None:
    """The command line as a :class:`Config`; None after printing help."""
    parser = OptionParser(OPTIONS)
    parsed = parser.parse(argv)
    values = parsed.values
    if values["help"]:
        print("\n".join([USAGE, *parser.help_lines()]))
        return None
    if parsed.rest:
        raise UsageError(f"unexpected argument {parsed.rest[0]!r}")
    if values["exactly_once"] and (values["output"] is None or not values["framed"]):
        raise UsageError("option --exactly-once needs --framed and --output FILE")
    if values["output"] is not None and not values["framed"]:
        raise UsageError("option --output needs --framed")
    listen = values["listen"]
    if listen is None:
        raise _Required("Must supply required '--listen' argument")
    address = parse_host_port(listen) if listen.count(":") == 1 else None
    if address is None:
        raise _Required("'--listen' argument should be in format: '127.0.0.1:7669")
    return Config(
        *address, bool(values["framed"]), not values["no_write"],
        values["expect"], values["output"], bool(values["exactly_once"]),
    )  # fmt: skip


class _Required(UsageError):
    """A required argument is missing or malformed; printed without ``Error:``."""


def _install_signals(loop: asyncio.AbstractEventLoop, receiver: Receiver) -> None:
    def on_signal() -> None:
        receiver.stopping = True
        receiver.stop(0)
        # Back to the default action, so a second signal kills a process that
        # is stuck writing to a stdout nobody reads.
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def serve(config: Config) -> int:
    """Listen until a signal, ``--expect`` or a closed stdout; return the exit status."""
    if config.exactly_once:
        return await serve_exactly_once(config)
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()

    def broken() -> None:
        if not stopped.done():
            print("Error: an output stream was closed", file=sys.stderr)
            stopped.set_result(1)

    try:
        giles_file = open(config.output, "wb") if config.output else None  # noqa: SIM115
    except OSError as err:
        print(f"Error: cannot open --output file: {err}", file=sys.stderr)
        return 1
    stdout = Output(sys.stdout.buffer, loop, broken)
    giles = Output(giles_file, loop, broken) if giles_file else None
    receiver = Receiver(config, stdout, giles, stopped)
    try:
        server = await loop.create_server(
            lambda: ReceiverProtocol(receiver), config.host, config.port
        )
    except OSError:
        print("Unable to listen", file=sys.stderr)
        return 1
    # Handlers first: whoever reads the listening line may signal at once.
    _install_signals(loop, receiver)
    port = server.sockets[0].getsockname()[1]
    stdout.write(f"Listening on {config.host}:{port}\n".encode())
    stdout.flush()
    try:
        code = await receiver.stopped
    finally:
        receiver.stopping = True
        server.close()
        for transport in list(receiver.connections):
            transport.abort()
        _close_outputs(stdout, giles, giles_file)
    return code


async def serve_exactly_once(config: Config) -> int:
    """The receiving end of the exactly-once sink protocol, FILE durable with its marks."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()
    assert config.output is not None  # the command line requires it

    def broken() -> None:
        if not stopped.done():
            print("Error: an output stream was closed", file=sys.stderr)
            stopped.set_result(1)

    try:
        ledger = Ledger(config.output)
    except (OSError, LedgerError) as err:
        why = f"{err.strerror}: {err.filename}" if isinstance(err, OSError) else str(err)
        print(f"Error: cannot open --output file: {why}", file=sys.stderr)
        return 1
    stdout = Output(sys.stdout.buffer, loop, broken)
    receiver = Receiver(config, stdout, None, stopped)

    def committed(frames: list[bytes]) -> None:
        if config.write:
            stdout.write(b"\n".join([*frames, b""]))
        if config.expect is not None and ledger.frames >= config.expect:
            receiver.stop(0)

    def failed(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        receiver.stop(1)

    intake = Intake(ledger, _giles_records, committed, failed)
    try:
        server = await loop.create_server(intake.protocol, config.host, config.port)
    except OSError:
        print("Unable to listen", file=sys.stderr)
        ledger.close()
        return 1
    _install_signals(loop, receiver)
    port = server.sockets[0].getsockname()[1]
    stdout.write(f"Listening on {config.host}:{port}\n".encode())
    stdout.flush()
    committed([])  # FILE may hold the --expect count already (a restart)
    try:
        code = await receiver.stopped
    finally:
        receiver.stopping = True
        server.close()
        intake.close()
        stdout.flush()
    return code


def _giles_records(frames: list[bytes]) -> bytes:
    """``frames`` in the giles receiver layout, stamped now (wall-clock ns)."""
    ts, pack = time.time_ns(), GILES_HEADER.pack
    return b"".join([pack(len(f), ts) + f for f in frames])


def _close_outputs(stdout: Output, giles: Output | None, giles_file: BinaryIO | None) -> None:
    stdout.flush()
    if giles is not None and giles_file is not None:
        giles.flush()
        giles_file.close()


def run(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except _Required as err:
        print(err, file=sys.stderr)
        print(USAGE, file=sys.stderr)
        return 1
    if config is None:
        return 0
    return asyncio.run(serve(config))


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
