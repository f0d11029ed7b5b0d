"""The bytes that come into a worker: sources, boundaries from other workers, the external channel.

asyncio hands every read to :meth:`Inputs.on_data` and nothing else; here each
kind of connection feeds its codec and hands what it means to the message flow
of :class:`machida.worker.Worker` (which mixes this class in): source frames
go through the local topology in slices, each followed by a flush; a batch from
another worker is de-duplicated, applied, flushed and then acknowledged, once
its output has left for the kernel (and, in resilience mode, once the event
log is fsync'd); external messages are Print, RotateLog and CleanShutdown.
"""

from __future__ import annotations

import asyncio
import time

from machida.console import say, warn
from machida.runtime.links import Conn
from machida.wire.boundary import BoundaryDecoder, Dedup, ack
from machida.wire.external import CLEAN_SHUTDOWN, PRINT, ROTATE_LOG, ExternalFrameDecoder

# While a sink holds output in user space, an acknowledgement is retried this often.
ACK_RETRY_S = 0.002
# Frames of one source read carried through between two flushes (a read holds up to 256 KiB).
SOURCE_SLICE = 2048


class Inbound:
    """An incoming data link: its decoder, who sends on it, and what was applied and acked."""

    __slots__ = ("acked", "applied", "decoder", "timer", "upstream")

    def __init__(self) -> None:
        self.decoder = BoundaryDecoder()
        self.upstream: str | None = None
        self.applied = 0  # highest sequence number applied from this link
        self.acked = 0  # highest sequence number acknowledged on it
        self.timer: asyncio.TimerHandle | None = None  # an acknowledgement waiting for a sink


class Inputs:
    """Handlers for incoming connections; mixed into :class:`machida.worker.Worker`."""

    # -- connections (asyncio only hands bytes here) ----------------------------------------

    def on_open(self, conn: Conn) -> None:
        if conn.kind.startswith("source:"):
            self.source_conns.add(conn)
            conn.last_read = time.monotonic()
            if not self.reading_sources or self.pause_reasons:
                conn.pause()
        elif conn.kind == "data":
            self.in_conns.add(conn)
            conn.state = Inbound()
            # A restarted worker's upstream may re-send before this worker has its topology
            # (states, sinks): hold the link until then, so that nothing is applied early.
            if self.pause_reasons or self.topology is None:
                conn.pause()
        elif conn.kind == "external":
            conn.state = ExternalFrameDecoder()
        elif conn.kind == "control":
            self.cluster.on_open(conn)

    def on_data(self, conn: Conn, data: bytes) -> None:
        kind = conn.kind
        if kind == "data":
            self._on_boundary_data(conn, data)
        elif kind.startswith("source:"):
            self._on_source_data(conn, data)
        elif kind == "external":
            self._on_external_data(conn, data)
        elif kind == "control":
            self.cluster.on_data(conn, data)

    def on_close(self, conn: Conn) -> None:
        kind = conn.kind
        if kind.startswith("source:"):
            self.source_conns.discard(conn)
            if conn.state is not None:
                conn.state.close()
        elif kind == "data":
            self.in_conns.discard(conn)
        elif kind == "external" and conn.state.pending:
            warn(f"WARNING: external connection from {conn.peer} closed in the middle of a "
                 f"frame; {conn.state.pending} byte(s) discarded")  # fmt: skip
        elif kind == "control":
            self.cluster.on_close(conn)

    def _on_source_data(self, conn: Conn, data: bytes) -> None:
        start = time.perf_counter_ns()
        conn.last_read = time.monotonic()
        source = conn.state
        if source is None:
            source = conn.state = self.topology.source_connection(int(conn.kind[7:]), conn.peer)
        counts = self.pstats[source.p]
        payloads = source.frames(data)
        # A large read is carried through in slices, each flushed at once, so that the
        # other workers start on their share early and acknowledgements come back sooner.
        for at in range(0, len(payloads), SOURCE_SLICE):
            before = counts.messages_in
            source.push_payloads(payloads[at : at + SOURCE_SLICE])
            self.flush()
            counts.latency.add_many(time.perf_counter_ns() - start, counts.messages_in - before)
        source.report_bad_frame()
        if source.failed:
            conn.close()

    def _on_boundary_data(self, conn: Conn, data: bytes) -> None:
        start = time.perf_counter_ns()
        before = [counts.messages_arrived for counts in self.pstats]
        state = conn.state
        decoder, upstream = state.decoder, state.upstream
        topology = self.topology
        for event in decoder.feed(data):
            if event[0] == "hello":
                upstream = state.upstream = event[1]
                self.dedup.setdefault(upstream, Dedup()).start(event[2])
            elif event[0] == "batch" and upstream is not None and topology is not None:
                self._apply_batch(conn, upstream, event[1], event[2])
        self.flush()
        self._acknowledge(conn)
        took = time.perf_counter_ns() - start
        for counts, earlier in zip(self.pstats, before):
            if counts.messages_arrived > earlier:
                counts.latency.add_many(took, counts.messages_arrived - earlier)
        if decoder.error is not None:
            warn(f"ERROR: data link from {conn.peer}: {decoder.error}; connection closed")
            conn.close()

    def _apply_batch(self, conn: Conn, upstream: str, first: int, runs: list) -> None:
        dedup = self.dedup[upstream]
        total = sum(len(run[4]) for run in runs)
        skip = skipped = dedup.skip(first, total)
        topology, pstats = self.topology, self.pstats
        for p, pos, key_index, is_int, values in runs:
            if skip:
                if skip >= len(values):
                    skip -= len(values)
                    continue
                values, skip = values[skip:], 0
            pstats[p].messages_arrived += len(values)
            apply = topology.arrival(p, pos)
            if is_int:
                for msg in values:
                    apply(key_index, msg)
                continue
            for data in values:
                ok, msg = topology.hop_in(data, p)
                if ok:
                    apply(key_index, msg)
        self.applied_total += total - skipped
        dedup.applied(first + total - 1)
        conn.state.applied = dedup.seq

    def _acknowledge(self, conn: Conn) -> None:
        """Acknowledge what was applied, once its output has left for the kernel.

        One acknowledgement per read; while a sink still holds bytes in user
        space the acknowledgement waits, which is what holds the upstream back.
        """
        state = conn.state
        if state.applied <= state.acked or state.timer is not None or conn.closed:
            return
        if any(sink is not None and sink.buffered for sink in self.sinks):
            state.timer = asyncio.get_running_loop().call_later(ACK_RETRY_S, self._ack_later, conn)
            return
        state.acked = state.applied
        conn.write(ack(state.applied))

    def _ack_later(self, conn: Conn) -> None:
        conn.state.timer = None
        self._acknowledge(conn)

    def _on_external_data(self, conn: Conn, data: bytes) -> None:
        decoder = conn.state
        for msg_id, text in decoder.feed(data):
            self.on_external(msg_id, text)
        if decoder.error is not None:
            warn(f"ERROR: external connection from {conn.peer}: {decoder.error}; "
                 f"connection closed")  # fmt: skip
            conn.close()

    def on_external(self, msg_id: int, text: str) -> None:
        if msg_id == PRINT:
            say(f"$$$ ExternalPrint: {text} $$$")
        elif msg_id == CLEAN_SHUTDOWN:
            say("External Clean Shutdown received." if not text else
                f"External Clean Shutdown received: {text}")  # fmt: skip
            self.cluster.request_shutdown(text)
        elif msg_id == ROTATE_LOG:
            self.cluster.rotate_log(text)
        else:
            say("Incoming External Message type not handled by external channel.")
