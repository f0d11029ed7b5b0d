"""The data plane of one worker, with no I/O: bytes read in, bytes to write out.

Everything a worker does with a message between two socket calls is here:

* a **source read** is framed whole (:class:`~machida.app.topology.SourceConnection`)
  and carried through the application's objects in slices of
  :data:`SOURCE_SLICE` frames, each followed by a flush;
* what the compiled pipeline emits waits in one buffer per pipeline, what it
  forwards to another worker in the **outbox** (one list per route, filled by
  ``list.append``); :meth:`DataPlane.flush` turns them into one sink write per
  pipeline and one numbered batch per downstream worker, kept in that
  worker's :class:`~machida.wire.boundary.OutgoingBoundary` until acknowledged;
* with resilience on, the flush's ``commit`` hook makes all of it durable
  before any batch leaves or anything is acknowledged (write-ahead); a hook
  that fails *halts* the plane: nothing more is sent, applied or acknowledged;
* with exactly-once output, each output is numbered in its key's stream and
  kept in its sink's backlog until the receiver acknowledges it
  (:mod:`machida.runtime.exactly_once`); the commit logs it too, and only then
  is it written, so nothing a receiver ever sees is lost by a crash of this
  worker;
* a **boundary read** (from an upstream worker) is decoded, de-duplicated per
  upstream incarnation, applied, flushed, and then owes an acknowledgement,
  which the shell sends once the output has left
  (:class:`~machida.wire.boundary.IncomingBoundary`);
* an acknowledgement read from a downstream worker frees its backlog; a
  reconnection re-sends the backlog.

The plane writes through the two callables it is given (``write_sink(p,
data)`` and ``write_boundary(peer, frame)``), tells :class:`FlowControl` when a
backlog passes its water marks, and answers what the shells and resilience ask
of it (:meth:`DataPlane.unacked`, :meth:`DataPlane.origins`, ...). The runner's
process shell gives it sockets; :class:`machida.testing.MemoryNetwork` joins
several planes in memory.
"""

from __future__ import annotations

import random
import time
from typing import Any, Callable

from machida.app.callbacks import Callbacks
from machida.app.loader import ints_round_trip
from machida.app.plan import AppPlan, Placement
from machida.app.topology import LocalTopology, PersistFn, SinkFor, SourceConnection
from machida.errors import FrameError
from machida.metrics.stats import Stats
from machida.runtime.exactly_once import Counters, ExactlyOnceOutput, Numbered
from machida.runtime.flow import FlowControl
from machida.wire.boundary import (
    COUNTERS,
    INTS,
    SERIALIZED,
    STATE,
    Backlog,
    Batch,
    BatchEvent,
    Dedup,
    Hello,
    IncomingBoundary,
    OutgoingBoundary,
    Run,
    decode_counters,
    encode_counters,
    u64_column,
)
from machida.wire.exactly_once import OutputRun, Stream

# Frames of one source read carried through between two flushes (a read holds up to 256 KiB):
# the other workers start on their share early and acknowledgements come back sooner.
SOURCE_SLICE = 2048

WriteSink = Callable[[int, bytes], None]
WriteBoundary = Callable[[str, bytes], None]
# commit(leaving, outputs): make durable what a flush is about to send (the batches leaving for
# each downstream worker, and with exactly-once output the output frames leaving for each
# pipeline's sink); False if that failed, and then nothing leaves.
Leaving = list[tuple[str, list[Batch]]]
CommitFn = Callable[[Leaving, Numbered], bool]
# handed_over(keys): every state handed over by a change of placement is acknowledged by its
# new owner (so durable there, with resilience); the keys (state name, key index).
HandedOver = Callable[[list[tuple[str, int]]], None]


class DataPlane:
    """One worker's message flow: sources and boundaries in, sinks and boundaries out.

    ``persist`` is called after each state call and ``commit`` in each flush (resilience's
    hooks, both optional); ``handed_over`` once the states a change of placement moved away
    are all acknowledged. An ``eager`` plane sends every forwarded message at once, in a
    batch of its own, so that an in-process run does not depend on how reads are sliced.
    With ``exactly_once`` (which needs ``commit``) output is numbered and kept until the
    receiver acknowledges it, and ``write_sink`` gets frames of the exactly-once sink
    protocol.
    """

    def __init__(
        self,
        plan: AppPlan,
        name: str,
        serializers: tuple[Callable, Callable],
        flow: FlowControl,
        write_sink: WriteSink,
        write_boundary: WriteBoundary,
        callbacks: Callbacks | None = None,
        stats: Stats | None = None,
        incarnation: int | None = None,
        persist: PersistFn | None = None,
        commit: CommitFn | None = None,
        eager: bool = False,
        handed_over: HandedOver | None = None,
        exactly_once: bool = False,
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
        self._write_sink, self._write_boundary = write_sink, write_boundary
        self._persist, self._commit, self._eager = persist, commit, eager
        self._handed_over = handed_over
        # a change of placement: per new owner, the last record of the states handed over to
        # it, and the keys those records carry, released once every mark is acknowledged
        self._handoff_marks: dict[str, int] = {}
        self._handing: list[tuple[str, int]] = []
        self.topology: LocalTopology | None = None
        # per pipeline, encoded output until flush (with exactly-once output, (key, bytes))
        self._sink_pending: list[list[Any]] = [[] for _ in plan.pipelines]
        self._outbox: dict[str, list[tuple[tuple, list]]] = {}
        self._senders: dict[tuple[str, tuple], Callable[[Any], None]] = {}
        self._outgoing: dict[str, OutgoingBoundary] = {}
        self._dedup: dict[str, Dedup] = {}  # per upstream worker, across its connections
        self.applied_total = 0
        self.accepted = [0] * len(plan.pipelines)  # source records taken in, per pipeline
        self.halted = False
        self.exactly_once = exactly_once
        self.output = ExactlyOnceOutput(plan, flow) if exactly_once else None

    # -- building -------------------------------------------------------------------------

    def build(self, placement: Placement, sink_for: SinkFor | None = None,
              values: bool = False) -> LocalTopology:  # fmt: skip
        """This worker's topology for ``placement`` (a fresh state for each key it owns);
        incoming boundaries may be read.

        By default what a pipeline emits is buffered until :meth:`flush`;
        ``sink_for`` (with ``values``: ``out(value, data)``) replaces that.
        """
        self.topology = LocalTopology(
            self.plan, self.name, placement, self.callbacks,
            sink_for=sink_for or (lambda p: self._sink_pending[p].append),
            forward_to=self._forward_to, serializers=self.serializers, stats=self.stats,
            sink_values=values, persist=self._persist, sink_keys=self.exactly_once,
        )  # fmt: skip
        self.flow.open_links()
        return self.topology

    def _forward_to(self, owner: str, route: tuple) -> Callable[[Any], None]:
        """Where the topology puts messages for ``route`` on ``owner``: a list, until flush
        (one list per owner and route, however often a placement change asks again)."""
        sender = self._senders.get((owner, route))
        if sender is not None:
            return sender
        pending: list = []
        self._outbox.setdefault(owner, []).append((route, pending))
        self._boundary_to(owner)
        sender = pending.append
        if self._eager:

            def sender(msg: Any) -> None:
                pending.append(msg)
                self.flush()

        self._senders[(owner, route)] = sender
        return sender

    def _boundary_to(self, peer: str) -> OutgoingBoundary:
        out = self._outgoing.get(peer)
        if out is None:
            out = self._outgoing[peer] = OutgoingBoundary(peer)
        return out

    @property
    def states(self) -> dict[str, dict[int, Any]]:
        """The states this worker owns, by state name and key index (none before build)."""
        return self.topology.states if self.topology is not None else {}

    # -- sources --------------------------------------------------------------------------

    def _built(self) -> LocalTopology:
        assert self.topology is not None, "the plane is used before build()"
        return self.topology

    def open_source(self, p: int, peer: str) -> SourceConnection:
        """A new source connection of pipeline ``p``, with its own stateless step instances."""
        return self._built().source_connection(p, peer)

    def source_read(self, source: SourceConnection, data: bytes, slice_size: int = SOURCE_SLICE):
        """Carry one source read through, flushing after each slice; False once the framing
        broke or the plane halted (the shell closes the connection)."""
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
        """After a batch: one write per sink, the commit, then one batch per downstream worker
        (with exactly-once output: the commit, then the sinks and the batches)."""
        if self.halted:
            return
        for p, pending in enumerate(self._sink_pending):
            if pending:
                self.pstats[p].messages_out += len(pending)
                if self.output is None:
                    self._write_sink(p, b"".join(pending))
                    pending.clear()
        numbered = self.output.number(self._sink_pending) if self.output is not None else []
        leaving = []
        for owner, routes in self._outbox.items():
            backlog = self._outgoing[owner].backlog
            for route, pending in routes:
                if pending:
                    self._queue_run(backlog, route, pending)
                    pending.clear()
            taken = backlog.take_batch()
            if taken:
                leaving.append((owner, taken))
        if self._commit is not None and not self._commit(leaving, numbered):
            self.halted = True  # what could not be made durable never leaves
            return
        for p, frames in numbered:
            if self._eo().written(p):
                for frame in frames:
                    self._write_sink(p, frame)
        for owner, taken in leaving:
            for batch in taken:
                self._write_boundary(owner, batch.frame)
            self.flow.link_backlog(owner, self.unacked(owner))

    def _queue_run(self, backlog: Backlog, route: tuple, messages: list) -> None:
        """Messages for one key of another worker: as u64s when they are plain ints."""
        column = u64_column(messages) if self.ints_travel_raw else None
        if column is not None:
            backlog.add(route, INTS, column)
            self.pstats[route[0]].messages_forwarded += len(column)
            return
        hop_out, p = self._built().hop_out, route[0]
        data = [d for d in map(hop_out, messages, [p] * len(messages)) if d is not None]
        self.pstats[p].messages_forwarded += len(data)  # those serialize refused are dropped
        if data:
            backlog.add(route, SERIALIZED, data)

    # -- the receiving half of a boundary -------------------------------------------------

    def boundary_read(self, incoming: IncomingBoundary, data: bytes) -> FrameError | None:
        """Apply what an upstream worker sent, then flush; the error if the bytes broke."""
        if self.halted:
            return None  # nothing more is applied, nor acknowledged
        start = time.perf_counter_ns()
        before = [counts.messages_arrived for counts in self.pstats]
        topology, upstream = self.topology, incoming.upstream
        for event in incoming.decoder.feed(data):
            if isinstance(event, BatchEvent):
                if upstream is None or topology is None:
                    continue  # before the hello, or before build: not applied, not acked
                refused = self._apply_batch(topology, upstream, incoming, event)
                if refused is not None:
                    incoming.decoder.error = refused  # nothing more is read from this boundary
                    break
            elif isinstance(event, Hello):
                incoming.upstream = upstream = event.worker
                self._dedup.setdefault(event.worker, Dedup()).start(event.incarnation)
            else:
                incoming.decoder.error = FrameError(f"a {type(event).__name__} from upstream")
                break
        self.flush()
        took = time.perf_counter_ns() - start
        for counts, earlier in zip(self.pstats, before):
            if counts.messages_arrived > earlier:
                counts.latency.add_many(took, counts.messages_arrived - earlier)
        return incoming.decoder.error

    def _apply_batch(self, topology: LocalTopology, upstream: str, incoming: IncomingBoundary,
                     batch: BatchEvent) -> FrameError | None:  # fmt: skip
        dedup = self._dedup[upstream]
        first, runs = batch.first, batch.runs
        if dedup.gap(first):
            return FrameError(f"a batch from {upstream} starts at record {first}, but "
                              f"{dedup.seq + 1} was next: records would be skipped")  # fmt: skip
        total = sum(len(run[4]) for run in runs)
        skipped = dedup.skip(first, total)
        fresh = _after(runs, skipped)  # what a replay repeats was checked and applied before
        for p, pos, key_index, kind, values in fresh:
            if kind == COUNTERS:
                problem = self._counters_problem(values)
                if problem is not None:
                    return problem
            elif kind != STATE and not topology.owns(p, pos, key_index):
                return FrameError(f"a batch has records for pipeline {p}, step {pos}, key index "
                                  f"{key_index}, which this worker does not own")  # fmt: skip
        for run in fresh:
            self._apply_run(topology, *run)
        self.applied_total += total - skipped
        dedup.applied(first + total - 1)
        incoming.applied = dedup.seq
        return None

    def _apply_run(self, topology: LocalTopology, p: int, pos: int, key_index: int, kind: int,
                   values: list) -> None:  # fmt: skip
        if kind == STATE:
            self._adopt(topology, p, pos, key_index, values)
            return
        if kind == COUNTERS:
            for data in values:
                self._eo().adopt(key_index, decode_counters(data))
            return
        self.pstats[p].messages_arrived += len(values)
        if kind == INTS:
            topology.arrival_run(p, pos)(key_index, values)
            return
        apply = topology.arrival(p, pos)
        for data in values:
            ok, msg = topology.hop_in(data, p)
            if ok:
                apply(key_index, msg)

    def _adopt(self, topology: LocalTopology, p: int, pos: int, key_index: int,
               values: list) -> None:  # fmt: skip
        """A key's state handed over by its former owner: this worker holds it now (and with
        resilience, logs it before acknowledging)."""
        state_name = topology.state_of(p, pos)
        for data in values:
            ok, state = topology.hop_in(data, p)
            if ok:
                topology.adopt_state(state_name, key_index, state)
                if self._persist is not None:
                    self._persist(state_name, key_index, True)

    def _counters_problem(self, values: list) -> FrameError | None:
        """Why kind 3 records (a moving key's output numbering) cannot be applied here."""
        if self.output is None:
            return FrameError("a batch carries exactly-once output numbering, but this worker "
                              "runs without --exactly-once")  # fmt: skip
        for data in values:
            try:
                counters = decode_counters(data)
            except FrameError as err:
                return err
            if any(p >= len(self.plan.pipelines) for p in counters):
                return FrameError(f"output numbering for pipeline {max(counters)}, which this "
                                  f"application does not have")  # fmt: skip
        return None

    def _counters_of(self, state_name: str, key_index: int) -> dict[int, tuple[int, int]]:
        """The numbering of the output streams a key of ``state_name`` numbers here."""
        if self.output is None:
            return {}
        return self.output.counters_of(state_name, key_index, self._built().output_state)

    # -- changing placement: grow and shrink ----------------------------------------------

    def change_placement(self, placement: Placement) -> list[tuple[str, int, str]]:
        """Route every key as ``placement`` says from now on, and hand over each key this
        worker holds and no longer owns: its state (through the module's ``serialize``) goes
        to the new owner as a record of the boundary, after everything sent to it before, and
        is released once acknowledged (``handed_over``). Nothing may be in flight for those
        keys: the cluster has stopped its sources and drained first. Returns the handoffs,
        ``(state, key index, new owner)``; none means nothing moves away from here."""
        topology = self._built()
        topology.apply_placement(placement)
        handoffs = [(state_name, i, owner) for state_name, states in topology.states.items()
                    for i, owner in zip(sorted(states), _owners(placement, state_name, states))
                    if owner != self.name]  # fmt: skip
        for state_name, i, owner in handoffs:
            data = topology.state_out(state_name, topology.take_state(state_name, i))
            p, pos = topology.state_routes[state_name]
            backlog = self._boundary_to(owner).backlog
            backlog.add((p, pos, i), STATE, [data] if data else [])
            counters = self._counters_of(state_name, i)
            if counters:
                backlog.add((p, pos, i), COUNTERS, [encode_counters(counters)])
            self._handing.append((state_name, i))
        self.flush()  # numbers the records, makes them durable, sends them
        for owner in {owner for _, _, owner in handoffs}:
            self._handoff_marks[owner] = self._outgoing[owner].backlog.next_seq - 1
        self._check_handoffs()
        return handoffs

    @property
    def handing_over(self) -> bool:
        """Whether states handed over by a change of placement still wait for their ack."""
        return bool(self._handing)

    def _check_handoffs(self) -> None:
        marks = self._handoff_marks
        for peer in [p for p, mark in marks.items() if self._outgoing[p].backlog.acked >= mark]:
            del marks[peer]
        if self._handing and not marks:
            released, self._handing = self._handing, []
            if self.output is not None:  # numbered by the new owners from now on
                for state_name, i in released:
                    self.output.release(state_name, i, self._built().output_state)
            if self._handed_over is not None:
                self._handed_over(released)

    def build_missing(self) -> list[tuple[str, int]]:
        """Build a fresh state for each key this worker owns and holds no state of: one whose
        former owner could not hand it over (it restarted without resilience)."""
        return self._built().build_missing()

    def forget(self, peer: str) -> None:
        """``peer`` has left the cluster: nothing is kept for it any more."""
        out = self._outgoing.pop(peer, None)
        if out is not None and out.backlog.unacked:
            raise AssertionError(f"{peer} left with {out.backlog.unacked} record(s) unacknowledged")
        self._outbox.pop(peer, None)
        self._senders = {key: s for key, s in self._senders.items() if key[0] != peer}
        self._handoff_marks.pop(peer, None)

    # -- the sending half of a boundary ---------------------------------------------------

    def boundary_opened(self, peer: str) -> list[bytes]:
        """A (re)connection to ``peer``: the frames to send first (hello, then the backlog)."""
        return self._boundary_to(peer).opened(self.name, self.incarnation)

    def ack_read(self, peer: str, data: bytes) -> FrameError | None:
        """Acknowledgements from ``peer``; the error if the bytes broke."""
        out = self._outgoing[peer]
        if out.read(data):
            for other in self._outgoing.values():
                self.flow.link_backlog(other.peer, other.backlog.unacked)
            if self._handing:
                self._check_handoffs()
        return out.decoder.error

    def unacked(self, peer: str) -> int:
        """Records sent (or about to be) to ``peer`` and not acknowledged yet."""
        out = self._outgoing.get(peer)
        return out.backlog.unacked if out is not None else 0

    # -- the exactly-once sinks (machida.runtime.sink.ExactlyOnceHost) --------------------

    def _eo(self) -> ExactlyOnceOutput:
        assert self.output is not None, "exactly-once output of a plane without it"
        return self.output

    def sink_opened(self, p: int) -> bytes:
        """A (re)connection of pipeline ``p``'s sink: the hello to send first."""
        return self._eo().opened(p, self.name)

    def sink_read(self, p: int, data: bytes) -> tuple[list[bytes], FrameError | None]:
        """What the receiver of pipeline ``p``'s sink said: the frames to send now (once it
        has answered the hello: what it does not hold), and the error if the bytes broke."""
        return self._eo().read(p, data)

    def sink_ready(self, p: int) -> bool:
        """Whether the receiver of pipeline ``p``'s sink has answered this connection's hello."""
        return self._eo().ready(p)

    # (and what resilience keeps of it: machida.durability.resilience.ResilienceHost)

    def sink_acked(self) -> dict[int, dict[Stream, int]]:
        """How far each sink's receiver has acknowledged each stream."""
        return self.output.acked() if self.output is not None else {}

    def sink_backlogs(self) -> dict[int, list[bytes]]:
        """Each sink's unacknowledged output, as frames."""
        return self.output.backlogs() if self.output is not None else {}

    def restore_sink(self, p: int, runs: list[OutputRun]) -> None:
        """A recovered worker's unacknowledged output for pipeline ``p``'s sink: sent again,
        after what the receiver says it holds, once the connection is up."""
        self._eo().restore_sink(p, runs)

    def stream_counters(self) -> Counters:
        """The numbering of each output stream held here: ``(p, key) -> (epoch, seq)``."""
        return self.output.stream_counters() if self.output is not None else {}

    def restore_counters(self, counters: Counters) -> None:
        """What a recovered worker's event log says of the output streams of the keys it
        holds (and of the pipelines without a key)."""
        if self.output is not None:
            self.output.restore_counters(counters, self._holds)

    def _holds(self, p: int, key: int) -> bool:
        state_name = self._built().output_state(p)
        return state_name is None or key in self.states.get(state_name, {})

    # -- counts ---------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """What the initializer compares to know that nothing is in flight (with exactly-once
        output, output not yet acknowledged by its receiver counts as in flight)."""
        backlogs = [out.backlog for out in self._outgoing.values()]
        sinks = self.output.unacked() if self.output is not None else 0
        return {
            "sent": sum(backlog.sent_total for backlog in backlogs),
            "applied": self.applied_total,
            "backlog": sum(backlog.unacked for backlog in backlogs) + sinks,
        }

    def leftovers(self) -> list[str]:
        links = [f"{out.backlog.unacked} unacknowledged message(s) for {out.peer}"
                 for out in self._outgoing.values() if out.backlog.unacked]  # fmt: skip
        return links + (self.output.leftovers() if self.output is not None else [])

    # -- what resilience keeps, and puts back after a crash -------------------------------
    # (machida.durability.resilience.ResilienceHost)

    def origins(self) -> dict[str, tuple[int, int]]:
        """The newest ``(incarnation, seq)`` applied from each upstream worker."""
        return {n: (d.incarnation, d.seq) for n, d in self._dedup.items()
                if d.incarnation is not None}  # fmt: skip

    def restore_origins(self, origins: dict[str, tuple[int, int]]) -> None:
        """What a recovered worker's event log says it applied from each upstream worker."""
        for upstream, (incarnation, seq) in origins.items():
            self._dedup.setdefault(upstream, Dedup()).restore(incarnation, seq)

    def source_counts(self) -> dict[str, int]:
        """Records each source (by pipeline name) has taken in, for those that took any."""
        return {p.name: n for p, n in zip(self.plan.pipelines, self.accepted) if n}

    def restore_source_counts(self, counts: dict[str, int]) -> None:
        for p, pipeline in enumerate(self.plan.pipelines):
            self.accepted[p] = counts.get(pipeline.name, 0)

    def acks(self) -> dict[str, int]:
        """How far each downstream worker has acknowledged."""
        return {peer: out.backlog.acked for peer, out in self._outgoing.items()}

    def backups(self) -> dict[str, tuple[int, list[Batch]]]:
        """Each downstream worker's acknowledged mark and the batches it may still need."""
        return {peer: (out.backlog.acked, out.backlog.replay())
                for peer, out in self._outgoing.items()}  # fmt: skip

    def restore_boundary(self, peer: str, acked: int, next_seq: int, frames: list[bytes]) -> None:
        """A recovered worker's backup for ``peer``: re-sent, under the same numbers, once the
        boundary is up."""
        self._boundary_to(peer).restore(acked, next_seq, frames)


def _owners(placement: Placement, state_name: str, states: dict[int, Any]) -> list[str]:
    """The owner, in ``placement``, of each key index held in ``states`` (sorted)."""
    owners = placement.owners_of(state_name)
    return [owners[i] for i in sorted(states)]


def _after(runs: list[Run], skip: int) -> list[Run]:
    """The runs of a batch without its first ``skip`` records."""
    out = []
    for p, pos, key_index, kind, values in runs:
        if skip >= len(values):
            skip -= len(values)
            continue
        out.append((p, pos, key_index, kind, values[skip:] if skip else values))
        skip = 0
    return out
