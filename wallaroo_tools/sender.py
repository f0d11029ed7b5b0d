"""``sender`` (giles sender): paces records into a Wallaroo source over TCP.

It is the front of the flow: it connects to a worker's ``--in`` address,
prints ``Connected``, and every ``--interval`` nanoseconds writes one batch of
``--batch-size`` records in one socket write, until ``--messages`` records are
out; then it closes the socket normally and exits 0. Records are a generated
u64 counter (``--u64``; with ``--binary --msg-size 12`` the canonical
sequence_window input ``00000008 | u64be(n)``), a decimal text counter, or the
contents of ``--file``. The command line and the bytes on the wire are those of
``wally@14c8252b1:giles/sender/giles-sender.pony``.

The module has two halves. The sans-I/O half builds records in bulk
(:class:`CounterRecords`, :class:`DecimalRecords`, :class:`ItemRecords`, each
with ``take(n) -> Batch``) and decides batch sizes and tick times
(:class:`BatchSizer`, :func:`next_tick`). The asyncio half only moves those
bytes: :class:`SenderProtocol` watches the socket's unsent buffer, so ticks are
skipped while it holds more than 64 KiB, and notices a peer that goes away.
``--interval 0`` writes batches back-to-back, pausing only for that buffer.
"""

from __future__ import annotations

import array
import asyncio
import os
import random
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from machida.options import Option, OptionParser, UsageError, parse_port, run_cli
from machida.wire.framing import HEADER

USAGE = "Usage: sender --host HOST:PORT --messages N [options]   (sender --help lists them)"
NOTES = (
    "  -h is --host, as in giles sender, so the help is --help only.\n"
    "  --interval 0 sends back-to-back; --vary-by V adds a random 0..V-1 records to every\n"
    "  batch, redrawn every 1000 ticks. Pony runtime options (--ponythreads ...) are ignored."
)

OPTIONS = [
    Option("host", "h", metavar="HOST:PORT", help="source to connect to (required)"),
    Option("messages", "m", kind="int", minimum=0, metavar="N", help="records to send (required)"),
    Option("batch-size", "s", kind="int", default=500, minimum=1, metavar="N", help="per tick"),
    Option("interval", "i", kind="int", default=5_000_000, minimum=0, metavar="NS", help="period"),
    Option("binary", "y", kind="flag", help="binary records; needs --msg-size or --variable-size"),
    Option("msg-size", "g", kind="int", minimum=1, metavar="BYTES", help="fixed record size"),
    Option("variable-size", "z", kind="flag", help="file holds u32be len | payload records"),
    Option("u64", "u", kind="flag", help="send a generated u64 counter"),
    Option("start-from", "v", kind="int", default=0, minimum=0, metavar="N", help="first is N+1"),
    Option("file", "f", metavar="P1[,P2...]", help="read records from files, in order"),
    Option("repeat", "r", kind="flag", help="wrap around when the files run out"),
    Option("no-write", "w", kind="flag", help="do not write sent.txt"),
    Option("vary-by", "j", kind="int", default=0, minimum=0, metavar="N", help="batch jitter"),
    Option("partition", default="", metavar="TEXT", help="bytes appended after the u64"),
    Option("phone-home", "p", metavar="HOST:PORT", help="ignored (Dagon)"),
    Option("name", "n", metavar="NAME", help="ignored (Dagon)"),
    Option("help", kind="flag", help="show this help (-h is --host, as in giles)"),
]  # fmt: skip
# giles gave -h to --host; "sender -h" with no address is someone asking for the help.
HOST_NOT_HELP = "-h is --host HOST:PORT, as in giles sender; sender --help prints the help"

# Above this much unsent data in the socket's buffer a tick is skipped: the
# peer is not keeping up, and queueing more only grows our memory.
HIGH_WATER = 64 * 1024
# --vary-by redraws its extra this often, counted in ticks that sent.
VARY_EVERY = 1000
U64_MASK = (1 << 64) - 1


# ---------------------------------------------------------------- configuration


@dataclass(frozen=True)
class SenderConfig:
    host: str
    port: str
    messages: int
    batch_size: int = 500
    interval: int = 5_000_000
    binary: bool = False
    msg_size: int | None = None
    variable_size: bool = False
    u64: bool = False
    start_from: int = 0
    files: tuple[str, ...] = ()
    repeat: bool = False
    write: bool = True
    vary_by: int = 0
    partition: bytes = b""


def parse_config(argv: list[str]) -> SenderConfig | list[str] | None:
    """The command line as a config, a list of problems to print, or None after ``--help``."""
    parser = OptionParser(OPTIONS)
    if "--help" in argv:
        print("\n".join([USAGE, *parser.help_lines(), NOTES]))
        return None
    bare = [i for i, arg in enumerate(argv) if arg == "-h"]
    if bare and (bare[0] + 1 == len(argv) or argv[bare[0] + 1].startswith("-")):
        raise UsageError(HOST_NOT_HELP)
    parsed = parser.parse(argv)
    v = parsed.values
    if parsed.rest:
        raise UsageError(f"unexpected argument {parsed.rest[0]!r}")
    problems = _problems(v)
    if problems:
        return problems
    host, port = v["host"].split(":")
    return SenderConfig(
        host=host, port=port, messages=v["messages"], batch_size=v["batch_size"],
        interval=v["interval"], binary=bool(v["binary"]), msg_size=v["msg_size"],
        variable_size=bool(v["variable_size"]), u64=bool(v["u64"]), start_from=v["start_from"],
        files=tuple(v["file"].split(",")) if v["file"] is not None else (),
        repeat=bool(v["repeat"]), write=not v["no_write"], vary_by=v["vary_by"],
        partition=v["partition"].encode("utf-8"),
    )  # fmt: skip


def _problems(v: dict) -> list[str]:
    """Every giles check that fails, in giles's order, with giles's words."""
    problems = []
    if v["host"] is None:
        problems.append("Must supply required '--host' argument")
    elif len(v["host"].split(":")) != 2:
        problems.append("'--host' argument should be in format: '127.0.0.1:8080")
    if v["messages"] is None:
        problems.append("Must supply required '--messages' argument")
    if v["msg_size"] is not None and v["variable_size"]:
        problems.append("--msg-size and --variable-size can't be used together")
    if v["binary"] and not v["variable_size"] and v["msg_size"] is None:
        problems.append("--binary requires either --msg-size or --variable-size")
    for path in v["file"].split(",") if v["file"] is not None else ():
        if not os.path.exists(path):
            problems.append(f"Error opening file '{path}'.")
    return problems


# ---------------------------------------------------------------- records (sans-I/O)


@dataclass
class Batch:
    """One tick's records: ``wire`` for the socket, ``items`` for sent.txt (if asked)."""

    wire: bytes
    count: int
    items: list[bytes] = field(default_factory=list)


class CounterRecords:
    """Records ``prefix | u64be(n) | suffix`` for n = start+1, start+2, ... (mod 2**64).

    Built a batch at a time without a Python loop per record: the batch is a
    template repeated, and each of the 8 counter bytes is copied into place
    with one strided slice assignment from a big-endian array of the values.
    ``item_offset`` is where the sent.txt item starts (after an outer frame).
    """

    def __init__(self, start: int, prefix: bytes, suffix: bytes = b"", item_offset: int = 0):
        self.next = start + 1
        self.prefix = prefix
        self.suffix = suffix
        self.item_offset = item_offset
        self.size = len(prefix) + 8 + len(suffix)

    def take(self, n: int, want_items: bool = False) -> Batch:
        first, self.next = self.next, self.next + n
        values: Iterable[int] = range(first, first + n)
        if first + n - 1 > U64_MASK:
            values = [x & U64_MASK for x in values]
        counters = array.array("Q", values)
        if sys.byteorder == "little":
            counters.byteswap()
        raw = counters.tobytes()
        out = bytearray((self.prefix + bytes(8) + self.suffix) * n)
        size, at = self.size, len(self.prefix)
        for j in range(8):
            out[at + j :: size] = raw[j::8]
        wire = bytes(out)
        items = []
        if want_items:
            items = [wire[i + self.item_offset : i + size] for i in range(0, len(wire), size)]
        return Batch(wire, n, items)


class DecimalRecords:
    """The text counter: ``u32be(len) | ASCII decimal of n``, n = start+1, ..."""

    def __init__(self, start: int) -> None:
        self.next = start + 1

    def take(self, n: int, want_items: bool = False) -> Batch:
        first, self.next = self.next, self.next + n
        items = [b"%d" % (x & U64_MASK) for x in range(first, first + n)]
        pack = HEADER.pack
        wire = b"".join([pack(len(item)) + item for item in items])
        return Batch(wire, n, items if want_items else [])


class ItemRecords:
    """Records from an iterator of items, each framed ``u32be(len) | item`` when ``frame``.

    Empty items are neither sent nor counted. A batch shorter than asked means
    the items ran out (:attr:`exhausted`).
    """

    def __init__(self, items: Iterator[bytes], frame: bool) -> None:
        self.items = items
        self.frame = frame
        self.exhausted = False

    def take(self, n: int, want_items: bool = False) -> Batch:
        taken: list[bytes] = []
        for item in self.items:
            if item:
                taken.append(item)
                if len(taken) == n:
                    break
        else:
            self.exhausted = True
        if self.frame:
            pack = HEADER.pack
            wire = b"".join([pack(len(item)) + item for item in taken])
        else:
            wire = b"".join(taken)
        return Batch(wire, len(taken), taken if want_items else [])


def text_lines(path: str) -> Iterator[bytes]:
    """The lines of a text file with ``\\n`` or ``\\r\\n`` removed (empty ones included)."""
    with open(path, "rb") as f:
        for line in f:
            if line.endswith(b"\n"):
                line = line[:-2] if line.endswith(b"\r\n") else line[:-1]
            yield line


def fixed_chunks(path: str, size: int, warn: Callable[[str], None]) -> Iterator[bytes]:
    """Consecutive ``size``-byte chunks; a trailing short chunk is dropped with a warning."""
    with open(path, "rb") as f:
        while chunk := f.read(size):
            if len(chunk) < size:
                warn(f"Warning: ignoring {len(chunk)} trailing bytes of '{path}' (-g {size})")
                return
            yield chunk


def variable_payloads(path: str, warn: Callable[[str], None]) -> Iterator[bytes]:
    """The payloads of ``u32be(len) | payload`` records; a cut-off record is dropped."""
    with open(path, "rb") as f:
        while header := f.read(4):
            length = HEADER.unpack(header)[0] if len(header) == 4 else -1
            payload = f.read(length) if length >= 0 else b""
            if len(payload) != length:
                warn(f"Warning: ignoring a truncated record at the end of '{path}'")
                return
            yield payload


def file_items(
    reader: Callable[[str], Iterator[bytes]], paths: Iterable[str], repeat: bool
) -> Iterator[bytes]:
    """Items of every file in order; with ``repeat`` start over, unless a pass gave nothing."""
    paths = list(paths)
    while True:
        produced = False
        for path in paths:
            for item in reader(path):
                produced = produced or bool(item)
                yield item
        if not (repeat and produced):
            return


def make_records(config: SenderConfig, warn: Callable[[str], None]):
    """The record source that giles would have chosen for ``config`` (tools.md §1.2)."""
    if config.files:
        if not config.binary:
            reader, frame = text_lines, True
        elif config.variable_size:
            reader, frame = (lambda p: variable_payloads(p, warn)), True
        else:
            size = config.msg_size or 1
            reader, frame = (lambda p: fixed_chunks(p, size, warn)), False
        return ItemRecords(file_items(reader, config.files, config.repeat), frame)
    if config.u64:
        inner = HEADER.pack(8 + len(config.partition))
        if config.binary:
            return CounterRecords(config.start_from, inner, config.partition)
        warn("Warning: --u64 without --binary frames each record twice, as giles did; "
             "sequence_window needs --binary --msg-size 12")  # fmt: skip
        outer = HEADER.pack(12 + len(config.partition))
        return CounterRecords(config.start_from, outer + inner, config.partition, item_offset=4)
    return DecimalRecords(config.start_from)


# ---------------------------------------------------------------- pacing (sans-I/O)


class BatchSizer:
    """Records per tick: ``batch_size`` plus the ``--vary-by`` extra.

    The extra starts at 0 and is redrawn uniformly from ``[0, vary_by)`` every
    :data:`VARY_EVERY` ticks that actually sent (skipped ticks do not count,
    as in giles, where a paused sender returned before its walk).
    """

    def __init__(self, batch_size: int, vary_by: int = 0, rng: random.Random | None = None):
        self.batch_size = batch_size
        self.vary_by = vary_by
        self.rng = rng or random.Random()
        self.ticks = 0
        self.extra = 0

    def next(self, remaining: int) -> int:
        if self.vary_by and self.ticks and self.ticks % VARY_EVERY == 0:
            self.extra = self.rng.randrange(self.vary_by)
        self.ticks += 1
        return min(self.batch_size + self.extra, remaining)


def next_tick(k: int, elapsed: float, interval: float) -> int:
    """The tick to run after tick ``k``, ``elapsed`` seconds after tick 0.

    Normally ``k + 1``. When the sender is late, all overdue ticks collapse into
    one that runs at once, like a Pony timer that fired while its actor was busy:
    missed ticks are not made up.
    """
    return max(k + 1, int(elapsed // interval))


# ---------------------------------------------------------------- socket side


class SenderProtocol(asyncio.Protocol):
    """Watches one outgoing connection: unsent bytes, and a peer that goes away.

    The sender never needs what the peer says; reads are discarded so that the
    peer cannot stall on a full window. A peer that closes or resets before
    every record has left our buffer marks the connection :attr:`lost`.
    """

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport: asyncio.WriteTransport | None = None
        self.lost = False
        self.finishing = False
        self.closed = loop.create_future()
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.transport.set_write_buffer_limits(high=HIGH_WATER, low=HIGH_WATER)

    def data_received(self, data: bytes) -> None:
        pass

    def eof_received(self) -> bool:
        self._gone()
        return False

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self._gone()
        if not self.closed.done():
            self.closed.set_result(None)

    def _gone(self) -> None:
        # Once finishing, every record has left our buffer (see :func:`send`).
        self.lost = self.lost or not self.finishing
        self.writable.set()  # wake a sender waiting for room, so it sees the loss


class SentLog:
    """``sent.txt``: ``<wall-clock ns>, <record>\\n`` per record; a batch shares one time."""

    def __init__(self, path: str = "sent.txt") -> None:
        self.file = open(path, "wb", buffering=1 << 20)  # noqa: SIM115

    def write(self, items: list[bytes]) -> None:
        if items:
            prefix = b"%d, " % time.time_ns()
            self.file.write(prefix + (b"\n" + prefix).join(items) + b"\n")

    def close(self) -> None:
        self.file.close()


class Sender:
    """Runs the ticks: one batch, one write, until every record is out or the peer is gone."""

    def __init__(self, config: SenderConfig, records, proto: SenderProtocol, log, progress):
        self.config = config
        self.records = records
        self.proto = proto
        self.log = log
        self.progress = progress
        self.sizer = BatchSizer(config.batch_size, config.vary_by)
        self.sent = 0

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        interval = self.config.interval / 1e9
        t0 = loop.time()
        k = 0
        while self.sent < self.config.messages and not self.proto.lost:
            if interval:
                await asyncio.sleep(t0 + k * interval - loop.time())
                # A tick that finds the buffer above the high mark is skipped.
                unsent = self.proto.transport.get_write_buffer_size()
                room = not self.proto.lost and unsent <= HIGH_WATER
                if room and not self._tick():
                    return
                k = next_tick(k, loop.time() - t0, interval)
            else:
                await self.proto.writable.wait()
                if self.proto.lost or not self._tick():
                    return
                # Let the loop run its callbacks (a peer's FIN, pause_writing).
                await asyncio.sleep(0)

    def _tick(self) -> bool:
        """Send one batch; False once the records have run out."""
        want = self.sizer.next(self.config.messages - self.sent)
        batch = self.records.take(want, self.log is not None)
        if batch.count:
            self.proto.transport.write(batch.wire)
            self.sent += batch.count
            if self.log is not None:
                self.log.write(batch.items)
            if self.progress is not None:
                self.progress.update(batch.count)
        return batch.count == want


def _progress_bar(total: int):
    """A tqdm bar on stderr when a person is watching, otherwise nothing."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="msg", unit_scale=True, file=sys.stderr, leave=False)


async def send(config: SenderConfig) -> int:
    """Connect, send, close; returns the exit status."""
    loop = asyncio.get_running_loop()
    # Like giles, a port may be a service name ("http"); digits that are no port
    # (99999, ²) cannot connect.
    port = parse_port(config.port) if config.port.isdigit() else config.port
    # Like giles, sent.txt is truncated before connecting.
    log = SentLog() if config.write else None
    try:
        if port is None:
            raise OSError(f"no port {config.port!r}")
        _, proto = await loop.create_connection(SenderProtocol, config.host, port)
    except OSError:
        if log is not None:
            log.close()
        print("Unable to connect", file=sys.stderr)
        return 1
    print("Connected", flush=True)
    records = make_records(config, _warn_once())
    progress = _progress_bar(config.messages)
    sender = Sender(config, records, proto, log, progress)
    started = time.perf_counter()
    try:
        await sender.run()
        if not proto.lost:
            # Wait for the buffer to empty: a reset would discard the rest unseen.
            proto.transport.set_write_buffer_limits(high=0)
            await proto.writable.wait()
        if proto.lost:
            proto.transport.abort()
        else:
            proto.finishing = True
            proto.transport.close()
        await proto.closed
    finally:
        if log is not None:
            log.close()
        if progress is not None:
            progress.close()
    if proto.lost:
        print(f"Error: connection lost after {sender.sent} records", file=sys.stderr)
        return 1
    seconds = time.perf_counter() - started
    rate = sender.sent / seconds if seconds > 0 else 0.0
    print(f"sender: {sender.sent} messages in {seconds:.3f} s ({rate:,.0f} msg/s)", file=sys.stderr)
    return 0


def _warn_once() -> Callable[[str], None]:
    seen: set[str] = set()

    def warn(text: str) -> None:
        if text not in seen:
            seen.add(text)
            print(text, file=sys.stderr, flush=True)

    return warn


def run(argv: list[str]) -> int:
    config = parse_config(argv)
    if config is None:
        return 0
    if isinstance(config, list):
        for problem in config:
            print(problem, file=sys.stderr)
        return 1
    try:
        return asyncio.run(send(config))
    except KeyboardInterrupt:
        return 130  # Ctrl-C: the user knows; no traceback


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
