"""``receiver``: giles receiver, the 2017 sink tool that records a run in ``received.txt``.

Workers connect with their ``--out`` connections and write ``u32be N | N bytes``
frames; any number of connections is accepted, each framed on its own. Every
frame becomes one record of ``received.txt`` in the current directory,
``u32be(N) | u64be(wall-clock ns at receipt) | N bytes`` (the layout
``validator`` reads as ``giles``). ``--no-write`` only counts. With
``--expect N`` the N-th record ends the run: exactly N records are kept, the
line ``N expected messages received. Terminating...`` is printed, and the
listener, the connections and the file are closed; SIGTERM and SIGINT end it
the same way. ``--metrics`` prints the timing lines of the Pony tool.
``--name`` and ``--phone-home`` (Dagon's coordination) are checked as the
2017 tool checked them and then have no effect.

With ``--exactly-once`` it is the receiving end of the exactly-once sink
protocol of workers started with ``--exactly-once`` (:mod:`.exactly_once`):
``received.txt`` and its marks (``received.txt.marks``) are made durable
together before anything is acknowledged, each output is recorded once, and
a restart with the same command, even after a kill -9, carries on where the
file ends (``--expect N`` stops once the file holds at least N records: what
one commit brings is kept whole).

As in :mod:`.data_receiver`, asyncio Protocols only feed a per-connection
:class:`~machida.wire.framing.FrameDecoder` and hand each read's frames, all at
once, to one :class:`Recorder`, which writes them with one call. A frame over
16 MiB closes its connection with an ``ERROR:`` line and a partial frame at
close gives a ``WARNING:`` line, both on stderr; a zero-length frame is an
empty record and framing stays in sync (the Pony tool lost sync there).
"""

from __future__ import annotations

import asyncio
import signal
import sys
import time
from dataclasses import dataclass
from typing import BinaryIO

from machida.options import (
    Option,
    OptionParser,
    UsageError,
    parse_host_port,
    parse_int,
    run_cli,
)
from machida.wire.framing import FrameDecoder
from wallaroo_tools.exactly_once import Intake
from wallaroo_tools.layouts import GILES_HEADER
from wallaroo_tools.ledger import Ledger, LedgerError

USAGE = (
    "Usage: receiver --listen HOST:PORT [--expect N] [--no-write] [--metrics]"
    " [--name NAME --phone-home HOST:PORT] [--exactly-once]"
)
OPTIONS = [
    Option("listen", "l", metavar="HOST:PORT", help="address to listen on (required)"),
    # read here, not by the parser, so that every bad value gets the 2017 tool's words
    Option("expect", "e", metavar="N", help="stop after N messages"),
    Option("no-write", "w", kind="flag", help="count, but do not write received.txt"),
    Option("metrics", "m", kind="flag", help="print start, end and throughput"),
    Option("name", "n", metavar="NAME", help="Dagon node name (no effect)"),
    Option("phone-home", "d", metavar="HOST:PORT", help="Dagon address (no effect)"),
    Option(
        "exactly-once",
        kind="flag",
        help="take workers' numbered output once each, received.txt durable",
    ),
    Option("help", "h", kind="flag", help="show this help"),
]
RECEIVED = "received.txt"
LISTENING = "Listening for data"
# received.txt is written in large pieces: one write per socket read, through this buffer.
FILE_BUFFER = 1 << 20


@dataclass(frozen=True)
class Config:
    host: str
    port: int
    expect: int | None
    write: bool
    metrics: bool
    exactly_once: bool = False


class _Refused(UsageError):
    """A check of the Pony tool failed; printed as its own words, then the usage."""


def _address(text: str, flag: str, example: str) -> tuple[str, int]:
    address = parse_host_port(text) if text.count(":") == 1 else None
    if address is None:
        raise _Refused(f"'--{flag}' argument should be in format: '{example}")
    return address


def parse_config(argv: list[str]) -> Config | None:
    """The command line as a :class:`Config`; None after printing help."""
    parser = OptionParser(OPTIONS)
    parsed = parser.parse(argv)
    given, values, rest = parsed.given, parsed.values, parsed.rest
    if values["help"]:
        print("\n".join([USAGE, *parser.help_lines()]))
        return None
    if rest:
        raise UsageError(f"unexpected argument {rest[0]!r}")
    if values["listen"] is None:
        raise _Refused("Must supply required '--listen' argument")
    host, port = _address(values["listen"], "listen", "127.0.0.1:8080")
    if values["phone_home"] is not None:
        _address(values["phone_home"], "phone-home", "127.0.0.1:8080")
    if ("phone_home" in given) != ("name" in given):
        raise _Refused("'--phone-home' must be used in conjunction with '--name'")
    expect = None if values["expect"] is None else _expect(values["expect"])
    if values["exactly_once"] and values["no_write"]:
        raise UsageError("option --exactly-once needs received.txt: leave out --no-write")
    return Config(host, port, expect, not values["no_write"], bool(values["metrics"]),
                  bool(values["exactly_once"]))  # fmt: skip


def _expect(text: str) -> int:
    try:
        expect = parse_int(text)
    except ValueError:
        expect = 0
    if expect < 1:
        raise _Refused("'--expect' must be an integer greater than 0")
    return expect


class Timing:
    """The ``--metrics`` lines: a monotonic start at the first record, the totals at the end."""

    def __init__(self) -> None:
        self.start: int | None = None

    def first_record(self) -> None:
        self.start = time.monotonic_ns()
        print(f"Metrics Start: {self.start}", flush=True)

    def finish(self, messages: int) -> None:
        if self.start is None:
            return
        end = time.monotonic_ns()
        seconds = max(end - self.start, 1) / 1e9
        print(f"Metrics End: {end}")
        print(f"Overall Time: {seconds:f}s")
        print(f"Messages: {messages}")
        print(f"Throughput: {int(messages / seconds / 1000)}k", flush=True)


class Recorder:
    """What every connection shares: the file, the count and the end of the run.

    A write to ``received.txt`` that fails (a full disk) ends the run with
    status 1 and one line naming the file and the error.
    """

    def __init__(self, config: Config, out: BinaryIO | None, stopped: asyncio.Future) -> None:
        self.config = config
        self.out = out
        self.stopped = stopped
        self.count = 0
        self.failed = False
        self.timing = Timing() if config.metrics else None
        self.connections: set[asyncio.Transport] = set()

    def frames(self, frames: list[bytes]) -> None:
        """One read's complete frames; past ``--expect`` nothing more is kept."""
        if self.stopped.done():
            return
        expect = self.config.expect
        if expect is not None:
            frames = frames[: expect - self.count]
        if not frames:
            return
        if self.count == 0 and self.timing is not None:
            self.timing.first_record()
        if self.out is not None:
            ts, pack = time.time_ns(), GILES_HEADER.pack
            try:
                self.out.write(b"".join([pack(len(f), ts) + f for f in frames]))
            except OSError as err:
                self.write_failed(err)
                return
        self.count += len(frames)
        if expect is not None and self.count >= expect:
            print(f"{self.count} expected messages received. Terminating...", flush=True)
            self.stopped.set_result(0)

    def write_failed(self, err: OSError) -> None:
        """Say why ``received.txt`` cannot be written, once, and end the run with status 1."""
        if not self.failed:
            self.failed = True
            print(f"Error: cannot write {RECEIVED}: {err.strerror or err}", file=sys.stderr)
        if not self.stopped.done():
            self.stopped.set_result(1)

    def close(self) -> None:
        """Close the file; what is still buffered is written now, and may fail too."""
        out, self.out = self.out, None
        if out is None:
            return
        try:
            out.close()
        except OSError as err:
            self.write_failed(err)

    def report(self, line: str) -> None:
        """A problem with one connection (stderr); quiet once the run is over."""
        if not self.stopped.done():
            print(line, file=sys.stderr, flush=True)


class ReceiverProtocol(asyncio.Protocol):
    """One sink connection: feeds its own decoder and hands the frames on."""

    def __init__(self, recorder: Recorder) -> None:
        self.recorder = recorder
        self.decoder = FrameDecoder()
        self.transport: asyncio.Transport | None = None
        self.peer = "?"

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer = f"{peer[0]}:{peer[1]}"
        self.recorder.connections.add(self.transport)

    def data_received(self, data: bytes) -> None:
        frames = self.decoder.feed(data)
        if frames:
            self.recorder.frames(frames)
        if self.decoder.error is not None:
            length = self.decoder.error.length
            self.recorder.report(f"ERROR: {self.peer}: frame length {length} exceeds 16 MiB")
            self.transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.recorder.connections.discard(self.transport)
        if self.decoder.pending and self.decoder.error is None:
            self.recorder.report(
                f"WARNING: {self.peer}: connection closed inside a frame; "
                f"discarded {self.decoder.pending} bytes"
            )


def _install_signals(loop: asyncio.AbstractEventLoop, stopped: asyncio.Future) -> None:
    def on_signal() -> None:
        if not stopped.done():
            stopped.set_result(0)
        for sig in (signal.SIGTERM, signal.SIGINT):  # a second signal kills
            loop.remove_signal_handler(sig)
            signal.signal(sig, signal.SIG_DFL)

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)


async def serve(config: Config) -> int:
    """Record until ``--expect`` or a signal; return the exit status."""
    if config.exactly_once:
        return await serve_exactly_once(config)
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()
    try:
        out = open(RECEIVED, "wb", buffering=FILE_BUFFER) if config.write else None  # noqa: SIM115
    except OSError as err:
        print(f"Error: cannot write {RECEIVED}: {err.strerror or err}", file=sys.stderr)
        return 1
    recorder = Recorder(config, out, stopped)
    try:
        server = await loop.create_server(
            lambda: ReceiverProtocol(recorder), config.host, config.port
        )
    except OSError:
        print("Unable to open listener", file=sys.stderr)
        if out is not None:
            out.close()
        return 1
    _install_signals(loop, stopped)
    print(LISTENING, flush=True)
    try:
        await stopped
    finally:
        server.close()
        for transport in list(recorder.connections):
            transport.abort()
        recorder.close()
        if recorder.timing is not None:
            recorder.timing.finish(recorder.count)
    return 1 if recorder.failed else stopped.result()


async def serve_exactly_once(config: Config) -> int:
    """The receiving end of the exactly-once sink protocol: received.txt durable with its
    marks; ``--expect`` counts what the file holds."""
    loop = asyncio.get_running_loop()
    stopped: asyncio.Future[int] = loop.create_future()
    try:
        ledger = Ledger(RECEIVED)
    except (OSError, LedgerError) as err:
        why = err.strerror if isinstance(err, OSError) else str(err)
        print(f"Error: cannot write {RECEIVED}: {why}", file=sys.stderr)
        return 1
    timing = Timing() if config.metrics else None
    counted = ledger.frames  # what the file held at start

    def stamped(frames: list[bytes]) -> bytes:
        ts, pack = time.time_ns(), GILES_HEADER.pack
        return b"".join([pack(len(f), ts) + f for f in frames])

    def committed(frames: list[bytes]) -> None:
        if frames and timing is not None and timing.start is None:
            timing.first_record()
        if config.expect is not None and ledger.frames >= config.expect and not stopped.done():
            print(f"{ledger.frames} expected messages received. Terminating...", flush=True)
            stopped.set_result(0)

    def failed(line: str) -> None:
        print(line, file=sys.stderr, flush=True)
        if not stopped.done():
            stopped.set_result(1)

    intake = Intake(ledger, stamped, committed, failed)
    try:
        server = await loop.create_server(intake.protocol, config.host, config.port)
    except OSError:
        print("Unable to open listener", file=sys.stderr)
        ledger.close()
        return 1
    _install_signals(loop, stopped)
    print(LISTENING, flush=True)
    committed([])  # received.txt may hold the --expect count already (a restart)
    try:
        await stopped
    finally:
        server.close()
        intake.close()
        if timing is not None:
            timing.finish(ledger.frames - counted)
    return stopped.result()


def run(argv: list[str]) -> int:
    try:
        config = parse_config(argv)
    except _Refused as err:
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
