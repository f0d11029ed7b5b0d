"""The data plane of one worker, with no I/O: bytes read in, bytes to write out.

Everything a worker does with a message between two socket calls is here:

* a **source read** is framed whole (:class:`~machida.app.pipeline.SourceConnection`)
  and carried through the application's objects in slices of
  :data:`SOURCE_SLICE` frames, each followed by a flush;
* what the compiled pipeline emits waits in one buffer per pipeline, what it
  forwards to another worker in the **outbox** (one list per route, filled by
  ``list.append``); :meth:`DataPlane.flush` turns them into one sink write per
  pipeline and one numbered batch per downstream worker, kept in that
  worker's :class:`~machida.wire.boundary.Backlog` until acknowledged;
* with resilience on, the flush's ``commit`` hook makes all of it durable
  before any batch leaves or anything is acknowledged (write-ahead); a hook
  that fails *halts* the plane: nothing more is sent, applied or acknowledged;
* a **boundary read** (from an upstream worker) is decoded, de-duplicated per
  upstream incarnation, applied, flushed, and then owes an acknowledgement,
  which the shell sends once the output has left (:class:`Inbound`);
* an acknowledgement read on a link to a downstream worker frees its backlog
  (:class:`Outbound`); a reconnection re-sends the backlog.

The plane writes through the two callables it is given (``write_sink(p,
data)`` and ``write_link(peer, frame)``) and tells :class:`FlowControl` when a
backlog passes its water marks. The runner's process shell gives it sockets;
the in-process driver joins several planes in memory.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from machida.app.callbacks import Callbacks
from machida.app.loader import ints_round_trip
from machida.app.pipeline import LocalTopology, SinkFor, SourceConnection
from machida.app.plan import AppPlan
from machida.errors import FrameError
from machida.metrics.stats import Stats
from machida.runtime.flow import FlowControl
from machida.wire.boundary import Backlog, Batch, BoundaryDecoder, Dedup, ack, hello, u64_column

# Frames of one source read carried through between two flushes (a read holds up to 256 KiB):
# the other workers start on their share early and acknowledgements come back sooner.
SOURCE_SLICE = 2048

WriteSink = Callable[[int, bytes], None]
WriteLink = Callable[[str, bytes], None]


class Inbound:
    """The receiving end of one incoming data link: who sends on it, what it applied and acked."""

    __slots__ = ("acked", "applied", "decoder", "upstream")

    def __init__(self) -> None:
        self.decoder = BoundaryDecoder()
        self.upstream: str | None = None
        self.applied = 0  # highest sequence number applied from this link
        self.acked = 0  # highest sequence number acknowledged on it

    @property
    def owes_ack(self) -> bool:
        return self.applied > self.acked

    def take_ack(self) -> bytes:
        """The acknowledgement of everything applied so far (the shell writes it)."""
        self.acked = self.applied
        return ack(self.applied)


class Outbound:
    """The sending end towards one downstream worker: its backlog and the acks coming back."""

    __slots__ = ("backlog", "decoder", "peer")

    def __init__(self, peer: str) -> None:
        self.peer = peer
        self.backlog = Backlog()
        self.decoder = BoundaryDecoder()

    def opened(self, me: str, incarnation: int) -> list[bytes]:
        """A new connection: a fresh decoder; the hello, then the whole unacknowledged backlog."""
        self.decoder = BoundaryDecoder()
        return [hello(me, incarnation), *(batch.frame for batch in self.backlog.replay())]

    def read(self, data: bytes) -> bool:
        """Acknowledgements in; whether any arrived."""
        events = self.decoder.feed(data)
        for event in events:
            if event[0] == "ack":
                self.backlog.ack(event[1])
        return bool(events)


class DataPlane:
    """One worker's message flow: sources and boundaries in, sinks and boundaries out."""

    def __init__(
        self,
        plan: AppPlan,
        name: str,
        serializers: tuple[Callable, Callable],
        flow: FlowControl,
        write_sink: WriteSink,
        write_link: WriteLink,
        callbacks: Callbacks | None = None,
        stats: Stats | None = None,
        incarnation: int | None = None,
    ) -> None:
        self.plan = plan
        self.name = name
        self.serializers = serializers
        self.ints_travel_raw = ints_round_trip(serializers)
        self.flow = flow
        self.callbacks = callbacks if callbacks is not None else Callbacks(name)
        self.stats = stats if stats is not None else Stats(name)
        self.pstats = [self.stats.pipeline(p.name) for p in plan.pipelines]
        self.incarnation = random.getrandbits(63) if incarnation is None else incarnation
        self._write_sink, self._write_link = write_sink, write_link
        self.topology: LocalTopology | None = None
        self._sink_pending: list[list[bytes]] = [[] for _ in plan.pipelines]
        self._outbox: dict[str, list[tuple[tuple, list]]] = {}
        self.outbound: dict[str, Outbound] = {}
        self.dedup: dict[str, Dedup] = {}
        self.applied_total = 0
        self.accepted = [0] * len(plan.pipelines)  # source records taken in, per pipeline
        self.halted = False
        # Hooks: after each state call (resilience's persist), and in each flush before any
        # batch leaves or anything is acknowledged (resilience's commit, which is given the
        # batches about to leave and says whether everything is durable).
        self.persist: Callable[[str, int, Any], None] | None = None
        self.commit: Callable[[list[tuple[str, list[Batch]]]], bool] | None = None

    # -- building -------------------------------------------------------------------------

    def build(self, workers: list[str], sink_for: SinkFor | None = None, values: bool = False):
        """This worker's topology for a member list in join order; incoming links may be read.

        By default what a pipeline emits is buffered until :meth:`flush`;
        ``sink_for`` (with ``values``: ``out(value, data)``) replaces that.
        """
        self.topology = LocalTopology(
            self.plan, self.name, self.plan.placement(workers), self.callbacks,
            sink_for=sink_for or (lambda p: self._sink_pending[p].append),
            forward_to=self._outbound, serializers=self.serializers, stats=self.stats,
            sink_values=values, persist=self.persist,
        )  # fmt: skip
        self.flow.open_links()
        return self.topology

    def _outbound(self, owner: str, route: tuple) -> Callable[[Any], None]:
        """Where the topology puts messages for ``route`` on ``owner``: a list, until flush."""
        pending: list = []
        self._outbox.setdefault(owner, []).append((route, pending))
        self.outbound.setdefault(owner, Outbound(owner))
        return pending.append

    @property
    def states(self) -> dict[str, dict[int, Any]]:
        """The states this worker owns, by state name and key index (none before build)."""
        return self.topology.states if self.topology is not None else {}

    # -- sources --------------------------------------------------------------------------

    def open_source(self, p: int, peer: str) -> SourceConnection:
        """A new source connection of pipeline ``p``, with its own stateless step instances."""
        return self.topology.source_connection(p, peer)

    def source_read(self, source: SourceConnection, data: bytes, slice_size: int = SOURCE_SLICE):
        """Carry one source read through, flushing after each slice; False once the framing
        broke (the shell closes the connection)."""
        start = time.perf_counter_ns()
        counts = self.pstats[source.p]
        payloads = source.frames(data)
        for at in range(0, len(payloads), slice_size):
            if self.halted:
                return False
            before = counts.messages_in
            chunk = payloads[at : at + slice_size]
            source.push_payloads(chunk)
            self.accepted[source.p] += len(chunk)
            self.flush()
            counts.latency.add_many(time.perf_counter_ns() - start, counts.messages_in - before)
        source.report_bad_frame()
        return not source.failed

    # -- flushing -------------------------------------------------------------------------

    def flush(self) -> None:
        """After a batch: one write per sink, the commit, then one batch per downstream worker."""
        if self.halted:
            return
        for p, pending in enumerate(self._sink_pending):
            if pending:
                self.pstats[p].messages_out += len(pending)
                self._write_sink(p, b"".join(pending))
                pending.clear()
        leaving = []
        for owner, routes in self._outbox.items():
            backlog = self.outbound[owner].backlog
            for route, pending in routes:
                if pending:
                    self._queue_run(backlog, route, pending)
                    pending.clear()
            taken = backlog.take_batch()
            if taken:
                leaving.append((owner, taken))
        if self.commit is not None and not self.commit(leaving):
            self.halted = True  # what could not be made durable never leaves
            return
        for owner, taken in leaving:
            for batch in taken:
                self._write_link(owner, batch.frame)
            self.flow.link_backlog(owner, self.outbound[owner].backlog.unacked)

    def _queue_run(self, backlog: Backlog, route: tuple, messages: list) -> None:
        """Messages for one key of another worker: as u64s when they are plain ints."""
        self.pstats[route[0]].messages_forwarded += len(messages)
        column = u64_column(messages) if self.ints_travel_raw else None
        if column is not None:
            backlog.add(route, True, column)
            return
        hop_out, p = self.topology.hop_out, route[0]
        data = [d for d in map(hop_out, messages, [p] * len(messages)) if d is not None]
        self.pstats[p].messages_forwarded -= len(messages) - len(data)
        if data:
            backlog.add(route, False, data)

    # -- the receiving end of a boundary --------------------------------------------------

    def boundary_read(self, inbound: Inbound, data: bytes) -> FrameError | None:
        """Apply what an upstream worker sent, then flush; the error if the bytes broke."""
        if self.halted:
            return None  # nothing more is applied, nor acknowledged
        start = time.perf_counter_ns()
        before = [counts.messages_arrived for counts in self.pstats]
        ready = self.topology is not None
        for event in inbound.decoder.feed(data):
            if event[0] == "hello":
                inbound.upstream = event[1]
                self.dedup.setdefault(event[1], Dedup()).start(event[2])
            elif event[0] == "batch" and inbound.upstream is not None and ready:
                refused = self._apply_batch(inbound, event[1], event[2])
                if refused is not None:
                    inbound.decoder.error = refused  # nothing more is read from this link
                    break
        self.flush()
        took = time.perf_counter_ns() - start
        for counts, earlier in zip(self.pstats, before):
            if counts.messages_arrived > earlier:
                counts.latency.add_many(took, counts.messages_arrived - earlier)
        return inbound.decoder.error

    def _apply_batch(self, inbound: Inbound, first: int, runs: list) -> FrameError | None:
        dedup = self.dedup[inbound.upstream]
        topology, pstats = self.topology, self.pstats
        refused = _refused(inbound.upstream, dedup, topology, first, runs)
        if refused is not None:
            return refused
        total = sum(len(run[4]) for run in runs)
        skip = skipped = dedup.skip(first, total)
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
        inbound.applied = dedup.seq
        return None

    # -- the sending end of a boundary ----------------------------------------------------

    def link_opened(self, peer: str) -> list[bytes]:
        """A (re)connection to ``peer``: the frames to send first (hello, then the backlog)."""
        out = self.outbound.setdefault(peer, Outbound(peer))
        return out.opened(self.name, self.incarnation)

    def link_read(self, peer: str, data: bytes) -> FrameError | None:
        """Acknowledgements from ``peer``; the error if the bytes broke."""
        out = self.outbound[peer]
        if out.read(data):
            for other in self.outbound.values():
                self.flow.link_backlog(other.peer, other.backlog.unacked)
        return out.decoder.error

    # -- counts ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """What the initializer compares to know that nothing is in flight."""
        backlogs = [out.backlog for out in self.outbound.values()]
        return {
            "sent": sum(backlog.sent_total for backlog in backlogs),
            "applied": self.applied_total,
            "backlog": sum(backlog.unacked for backlog in backlogs),
        }

    def leftovers(self) -> list[str]:
        return [f"{out.backlog.unacked} unacknowledged message(s) for {out.peer}"
                for out in self.outbound.values() if out.backlog.unacked]  # fmt: skip


def _refused(upstream: str, dedup: Dedup, topology: LocalTopology, first: int, runs: list):
    """Why a batch cannot be trusted (it skips records, or names a key not owned here)."""
    if dedup.gap(first):
        return FrameError(f"a batch from {upstream} starts at record {first}, but "
                          f"{dedup.seq + 1} was next: records would be skipped")  # fmt: skip
    for p, pos, key_index, _, _ in runs:
        if not topology.owns(p, pos, key_index):
            return FrameError(f"a batch has records for pipeline {p}, step {pos}, key index "
                              f"{key_index}, which this worker does not own")  # fmt: skip
    return None
