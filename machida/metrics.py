"""The metrics stream (``--metrics``): counters the runtime bumps, records a client streams out.

Every worker owns one :class:`Stats`. The runtime asks it once for the
counter objects of each pipeline and step (:meth:`Stats.pipeline`,
:meth:`Stats.step`), keeps direct references, and bumps plain integer
attributes on the hot path; latencies go into power-of-two
:class:`Histogram` bins. Nothing here awaits or locks. About once a second a
:class:`MetricsClient` turns the stats into a self-describing record
(cumulative since start; the receiver computes rates by differencing) and
writes it, framed by the sans-I/O codec :func:`encode_record` /
:class:`RecordDecoder`, to the metrics receiver. The client stays out of the
way: it connects quietly, drops records rather than buffer past a small
bound, and never raises into the worker. :class:`RecordServer` is the small
receiving end that tests and a metrics UI use. The record format is
documented in ``docs/metrics.md``.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import socket
import time
from typing import Any, Callable

from machida.aio import wait_event, within
from machida.errors import FrameError
from machida.framing import FrameDecoder, encode_frame

FORMAT = "machida-metrics/1"
# 64 bins of 2**i ns reach 2**63 ns (292 years); every latency fits, the last bin catches the rest.
BINS = 64
# A record is a few KiB even for large applications; anything near 1 MiB is a broken peer.
MAX_RECORD = 1024 * 1024
# About sixteen typical records: a receiver that is that far behind is not reading, so newer
# records are dropped instead of queued. Keeps a stalled receiver from costing the worker memory.
MAX_BUFFERED = 64 * 1024
# Kernel send buffer for the metrics socket. Records are small and once a second; a larger
# kernel buffer would only hide a stalled receiver for longer while holding memory.
KERNEL_SEND_BUFFER = 64 * 1024
# machida.md §12: connection attempts repeat every second.
RETRY_S = 1.0
# A connect that has not finished by then is abandoned and retried (e.g. a black-holed host).
CONNECT_TIMEOUT_S = 1.0
# How long stop() waits for the streaming task to end.
STOP_S = 5.0


# -- latency histogram ---------------------------------------------------------------------


def bin_of(ns: int) -> int:
    """The bin of a latency of ``ns`` nanoseconds: bin ``i`` holds ``2**(i-1) < ns <= 2**i``.

    Bin 0 holds everything ``<= 1`` (zero and, should a clock step back, negatives);
    bin 63 also holds everything above ``2**63``. So 1 → 0, 2 → 1, 3 and 4 → 2, 1000 → 10.
    """
    if ns <= 1:
        return 0
    i = (ns - 1).bit_length()
    return i if i < BINS else BINS - 1


def upper_bound(i: int) -> int:
    """The largest latency, in ns, that bin ``i`` holds."""
    return 1 << i


class Histogram:
    """Counts of latencies in power-of-two nanosecond bins (see :func:`bin_of`).

    Fixed bins make recording a bit-length and an increment, make histograms of
    different workers or intervals add up bin by bin, and answer percentile
    questions to within a factor of two: ``percentile(0.99)`` is the upper
    bound of the bin holding the 99th percentile, as Wallaroo's UI showed it.
    """

    __slots__ = ("counts",)

    def __init__(self, counts: list[int] | None = None) -> None:
        """An empty histogram, or one holding a copy of ``counts`` (:data:`BINS` bin counts)."""
        self.counts = [0] * BINS if counts is None else list(counts)

    def add(self, ns: int) -> None:
        """Record one message that took ``ns`` nanoseconds."""
        self.counts[bin_of(ns)] += 1

    def add_many(self, ns: int, count: int) -> None:
        """Record ``count`` messages that each took ``ns`` ns (one timing for a whole batch)."""
        self.counts[bin_of(ns)] += count

    def merge(self, other: Histogram) -> Histogram:
        """Add ``other``'s counts into this histogram, in place; returns ``self``."""
        counts = self.counts
        for i, c in enumerate(other.counts):
            counts[i] += c
        return self

    def minus(self, older: Histogram) -> Histogram:
        """What was counted since ``older``, an earlier state of this histogram: a new histogram
        of the differences, bin by bin, none below zero."""
        return Histogram([max(0, a - b) for a, b in zip(self.counts, older.counts)])

    @property
    def count(self) -> int:
        return sum(self.counts)

    def percentile(self, q: float) -> int | None:
        """Upper bound (ns) of the bin holding quantile ``q`` (0 < q <= 1); ``None`` if empty."""
        total = self.count
        if total == 0:
            return None
        # The tiny shave keeps float noise (0.07 * 100 == 7.000000000000001) off the next rank.
        rank = max(1, math.ceil(q * total * (1 - 1e-12)))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return upper_bound(i)
        return upper_bound(BINS - 1)

    def to_json(self) -> dict[str, int]:
        """Sparse form: ``{"<bin index>": count}`` for non-empty bins (JSON keys are strings)."""
        return {str(i): c for i, c in enumerate(self.counts) if c}

    @classmethod
    def from_json(cls, data: dict[str, int]) -> Histogram:
        """The inverse of :meth:`to_json`, for receivers; ValueError for a bin that is not 0 to
        ``BINS - 1`` or a count that is not an int >= 0."""
        h = cls()
        for key, count in data.items():
            index = int(key)
            if not 0 <= index < BINS:
                raise ValueError(f"no latency bin {key!r}")
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(f"not a count: {count!r}")
            h.counts[index] += count
        return h


# -- counters --------------------------------------------------------------------------------


class StepStats:
    """Counters of one step of one pipeline on this worker; the runtime bumps them directly.

    ``messages_in``: messages given to the step's computation. ``messages_out``:
    messages it produced (a ``compute_multi`` list counts its elements; ``None``
    counts nothing). ``latency``: optional timings of the computation.
    """

    __slots__ = ("latency", "messages_in", "messages_out", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages_in = 0
        self.messages_out = 0
        self.latency = Histogram()

    def snapshot(self) -> dict[str, Any]:
        counts = {"messages_in": self.messages_in, "messages_out": self.messages_out}
        return {**counts, "latency": self.latency.to_json()}


PIPELINE_COUNTERS = ("messages_in", "messages_arrived", "messages_forwarded", "messages_out")


class PipelineStats:
    """Counters of one pipeline's share on this worker; the four message counts are disjoint.

    ``messages_in``: decoded at a source connection here. ``messages_arrived``:
    came from another worker over a boundary. ``messages_forwarded``: left for
    another worker. ``messages_out``: encoded for the sink. ``latency``: time
    from entering this worker (source read or arrival) to leaving it (sink or
    forward), Wallaroo's "worker by pipeline" latency.
    """

    __slots__ = (*PIPELINE_COUNTERS, "latency", "name", "steps")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages_in = 0
        self.messages_arrived = 0
        self.messages_forwarded = 0
        self.messages_out = 0
        self.latency = Histogram()
        self.steps: dict[str, StepStats] = {}

    def snapshot(self) -> dict[str, Any]:
        record: dict[str, Any] = {name: getattr(self, name) for name in PIPELINE_COUNTERS}
        record["latency"] = self.latency.to_json()
        record["steps"] = {name: step.snapshot() for name, step in self.steps.items()}
        return record


STREAM_COUNTERS = ("records_sent", "records_dropped", "connections")


class Stats:
    """All counters of one worker, and the record that describes them.

    Counters only grow, from zero at process start; a restarted worker starts
    again from zero with a new ``started`` and ``pid``. Fields bumped by the
    metrics client itself: ``records_sent``, ``records_dropped``, ``connections``.
    """

    def __init__(self, worker: str) -> None:
        self.worker = worker
        self.pid = os.getpid()
        self.started = time.time()
        self._t0 = time.monotonic()
        self.pipelines: dict[str, PipelineStats] = {}
        self.seq = 0
        self.records_sent = 0
        self.records_dropped = 0
        self.connections = 0

    def pipeline(self, pipeline: str) -> PipelineStats:
        """The counters of ``pipeline``, created on first use (keep the reference)."""
        if pipeline not in self.pipelines:
            self.pipelines[pipeline] = PipelineStats(pipeline)
        return self.pipelines[pipeline]

    def step(self, pipeline: str, step: str) -> StepStats:
        """The counters of ``step`` in ``pipeline``; two steps of one name share them."""
        steps = self.pipeline(pipeline).steps
        if step not in steps:
            steps[step] = StepStats(step)
        return steps[step]

    def totals(self) -> dict[str, Any]:
        """The worker's totals: every pipeline's counters and latencies added up."""
        latency = Histogram()
        totals: dict[str, Any] = dict.fromkeys(PIPELINE_COUNTERS, 0)
        for p in self.pipelines.values():
            for name in PIPELINE_COUNTERS:
                totals[name] += getattr(p, name)
            latency.merge(p.latency)
        totals["latency"] = latency.to_json()
        return totals

    def snapshot(self, now: float | None = None) -> dict[str, Any]:
        """The record for this moment (``now``: Unix time in seconds, default the clock)."""
        self.seq += 1
        return {
            "format": FORMAT,
            "worker": self.worker,
            "pid": self.pid,
            "started": self.started,
            "time": time.time() if now is None else now,
            "elapsed_s": time.monotonic() - self._t0,
            "seq": self.seq,
            "totals": self.totals(),
            "pipelines": {name: p.snapshot() for name, p in self.pipelines.items()},
            "stream": {name: getattr(self, name) for name in STREAM_COUNTERS},
        }


# -- codec (sans-I/O) ------------------------------------------------------------------------


def encode_record(record: dict[str, Any]) -> bytes:
    """``u32be length | JSON``; ASCII-escaped, so valid UTF-8 even for odd worker names."""
    payload = json.dumps(record, separators=(",", ":")).encode("ascii")
    if len(payload) > MAX_RECORD:
        raise ValueError(f"metrics record of {len(payload)} bytes exceeds {MAX_RECORD}")
    return encode_frame(payload)


class RecordDecoder:
    """Splits a metrics stream into records (dicts), all the complete ones of a read at once.

    A length above :data:`MAX_RECORD`, a payload that is not UTF-8 JSON, or JSON
    that is not an object sets :attr:`error` (a :class:`FrameError`); the
    records before it are still returned, and later feeds return nothing.
    """

    __slots__ = ("_frames", "error")

    def __init__(self) -> None:
        self._frames = FrameDecoder(max_length=MAX_RECORD)
        self.error: FrameError | None = None

    def feed(self, data: bytes) -> list[dict[str, Any]]:
        if self.error is not None:
            return []
        records = []
        for payload in self._frames.feed(data):
            try:
                record = json.loads(payload.decode("utf-8"))
            except (ValueError, RecursionError) as err:
                self.error = FrameError(f"metrics record is not JSON: {err}", len(payload))
                return records
            if not isinstance(record, dict):
                kind = type(record).__name__
                self.error = FrameError(f"metrics record is a JSON {kind}, expected an object")
                return records
            records.append(record)
        self.error = self._frames.error
        return records


# -- client ----------------------------------------------------------------------------------


class _Discard(asyncio.Protocol):
    """The client's end: says when the connection is gone, ignores anything the receiver sends."""

    def __init__(self) -> None:
        self.lost = asyncio.Event()

    def data_received(self, data: bytes) -> None:
        pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost.set()


class MetricsClient:
    """Streams ``stats`` records to ``host:port`` about every ``interval`` s, never in the way.

    :meth:`start` schedules one task on the running loop; the worker's code never
    awaits it. Connecting is retried every ``retry`` s without a word. While
    connected a record is written each interval unless the transport still
    holds more than :data:`MAX_BUFFERED` bytes, in which case the record is
    dropped and ``stats.records_dropped`` counts it. Any failure ends only the
    connection, which is then retried.
    """

    def __init__(
        self, host: str, port: int, stats: Stats, interval: float = 1.0, retry: float = RETRY_S
    ) -> None:
        self.host = host
        self.port = port
        self.stats = stats
        self.interval = interval
        self.retry = retry
        self.attempts = 0
        self._transport: asyncio.WriteTransport | None = None
        self._task: asyncio.Task | None = None

    @property
    def connected(self) -> bool:
        return self._transport is not None

    @property
    def buffered(self) -> int:
        """Bytes waiting in the transport (0 when not connected)."""
        return self._transport.get_write_buffer_size() if self._transport else 0

    def start(self) -> None:
        """Begin connecting and streaming in the background (call from the running loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        """Stop streaming and close the connection; records not yet written are dropped."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait({task}, timeout=STOP_S)

    async def _run(self) -> None:
        try:
            while True:
                try:
                    protocol = await self._connect()
                    if protocol is not None:
                        await self._stream(protocol)
                except Exception:
                    pass  # whatever went wrong ends only this connection; the worker never sees it
                finally:
                    self._drop_connection()
                await asyncio.sleep(self.retry)
        finally:
            self._drop_connection()

    async def _connect(self) -> _Discard | None:
        """One quiet attempt; the protocol of the new connection, or ``None``."""
        self.attempts += 1
        loop = asyncio.get_running_loop()
        try:
            connecting = loop.create_connection(_Discard, self.host, self.port)
            transport, protocol = await within(connecting, CONNECT_TIMEOUT_S)
        except (OSError, asyncio.TimeoutError):
            return None
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, KERNEL_SEND_BUFFER)
        self.stats.connections += 1
        return protocol

    async def _stream(self, protocol: _Discard) -> None:
        while not protocol.lost.is_set():
            self._send_one()
            await wait_event(protocol.lost, self.interval)

    def _send_one(self) -> None:
        transport, stats = self._transport, self.stats
        if transport is None or transport.is_closing():
            return
        record = stats.snapshot()  # even when dropped, so ``seq`` shows the gap
        if transport.get_write_buffer_size() > MAX_BUFFERED:
            stats.records_dropped += 1
            return
        try:
            data = encode_record(record)
        except ValueError:
            stats.records_dropped += 1
            return
        transport.write(data)
        stats.records_sent += 1

    def _drop_connection(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            transport.abort()  # unsent records are worthless once late; don't linger to flush


# -- receiver --------------------------------------------------------------------------------


OnRecord = Callable[[dict[str, Any]], None]


class _Receive(asyncio.Protocol):
    def __init__(self, server: RecordServer) -> None:
        self.server = server
        self.decoder = RecordDecoder()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.server._transports.add(transport)

    def data_received(self, data: bytes) -> None:
        for record in self.decoder.feed(data):
            self.server.on_record(record)
        if self.decoder.error is not None and self.transport is not None:
            self.transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server._transports.discard(self.transport)


class RecordServer:
    """A metrics receiver (made by :func:`serve_records`): ``on_record(record)`` per record.

    A connection whose bytes do not decode is closed; the others go on.
    :meth:`close` also closes accepted connections, so clients see the
    receiver go away (``Server.close`` alone leaves them open before 3.12).
    """

    def __init__(self, on_record: OnRecord) -> None:
        self.on_record = on_record
        self._server: asyncio.AbstractServer | None = None
        self._transports: set[Any] = set()

    @property
    def port(self) -> int:
        assert self._server is not None, "start() first"
        return self._server.sockets[0].getsockname()[1]

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for transport in list(self._transports):
            transport.close()

    async def wait_closed(self) -> None:
        if self._server is not None:
            await self._server.wait_closed()


async def serve_records(host: str, port: int, on_record: OnRecord) -> RecordServer:
    """Start a :class:`RecordServer` on ``host:port`` (0 for an ephemeral port)."""
    server = RecordServer(on_record)
    loop = asyncio.get_running_loop()
    server._server = await loop.create_server(lambda: _Receive(server), host, port)
    return server
