"""One worker's exactly-once output, with no I/O: the numbering of its streams, its sinks' backlogs.

With ``--exactly-once`` the data plane (:mod:`machida.runtime.dataplane`) hands
each flush's output here, as ``(key index, bytes)`` per pipeline.
:meth:`ExactlyOnceOutput.number` numbers it in its streams (a key's stream
starts with a random epoch the first time the key emits without a numbering)
and keeps it in the pipeline's :class:`~machida.wire.exactly_once.OutgoingSink`
until the receiver acknowledges it, and returns the frames the commit logs
before they are written. A key's numbering goes with its state when the key
moves (:meth:`counters_of` on the giving side, :meth:`adopt` on the new owner),
and is forgotten here once the handover is acknowledged (:meth:`release`).
Resilience logs and restores all of it (``stream_counters``, ``sink_backlogs``,
``restore_sink``, ...); flow control holds the inputs while a sink's
unacknowledged output passes its high mark.
"""

from __future__ import annotations

import random
from typing import Callable

from machida.app.plan import AppPlan
from machida.errors import FrameError
from machida.runtime.flow import FlowControl
from machida.wire.exactly_once import OutgoingSink, OutputRun, Stream, outputs

# Each pipeline's frames of numbered output, as a flush leaves them: (pipeline, frames).
Numbered = list[tuple[int, list[bytes]]]
# (pipeline, key index) -> (epoch, last number given)
Counters = dict[tuple[int, int], tuple[int, int]]
# The state whose keys number a pipeline's streams (None: the pipeline has no state step).
OutputState = Callable[[int], "str | None"]


class ExactlyOnceOutput:
    """The numbered output of one worker: per pipeline with a sink, its backlog and the
    conversation with its receiver; per stream, its epoch and last number."""

    def __init__(self, plan: AppPlan, flow: FlowControl) -> None:
        self.plan = plan
        self.flow = flow
        self.sinks: list[OutgoingSink | None] = [
            OutgoingSink() if p.sink is not None else None for p in plan.pipelines
        ]
        self.counters: dict[tuple[int, int], list[int]] = {}

    # -- numbering -----------------------------------------------------------------------

    def number(self, pending: list[list]) -> Numbered:
        """Each pipeline's pending ``(key, bytes)`` output, numbered and kept (the lists are
        emptied): the frames to log, then write."""
        numbered = []
        for p, outputs_of_p in enumerate(pending):
            if not outputs_of_p:
                continue
            by_key: dict[int, list[bytes]] = {}
            for key, data in outputs_of_p:
                by_key.setdefault(key, []).append(data)
            outputs_of_p.clear()
            runs = [self._numbered(p, key, values) for key, values in by_key.items()]
            self._sink(p).backlog.add(runs)
            numbered.append((p, outputs(runs)))
        return numbered

    def _numbered(self, p: int, key: int, values: list[bytes]) -> OutputRun:
        counter = self.counters.get((p, key))
        if counter is None:
            counter = self.counters[(p, key)] = [random.getrandbits(64), 0]
        first = counter[1] + 1
        counter[1] += len(values)
        return OutputRun(Stream(p, key, counter[0]), first, values)

    def written(self, p: int) -> bool:
        """Output was kept for pipeline ``p``: whether to write it now (the receiver has
        answered this connection's hello); flow control hears of the backlog."""
        sink = self._sink(p)
        self._backlog(p)
        return sink.ready

    # -- a key moving ----------------------------------------------------------------------

    def counters_of(self, state_name: str, key: int, output_state: OutputState) -> dict:
        """The numbering of the streams a key of ``state_name`` numbers, by pipeline."""
        return {p: (c[0], c[1]) for (p, k), c in self.counters.items()
                if k == key and output_state(p) == state_name}  # fmt: skip

    def adopt(self, key: int, counters: dict[int, tuple[int, int]]) -> None:
        """The numbering of a key's streams, handed over with its state."""
        for p, (epoch, seq) in counters.items():
            self.counters[(p, key)] = [epoch, seq]

    def release(self, state_name: str, key: int, output_state: OutputState) -> None:
        """A key handed over and acknowledged: its new owner numbers its streams now."""
        for p in self.counters_of(state_name, key, output_state):
            del self.counters[(p, key)]

    # -- the sinks' connections ------------------------------------------------------------

    def opened(self, p: int, worker: str) -> bytes:
        return self._sink(p).opened(worker)

    def read(self, p: int, data: bytes) -> tuple[list[bytes], FrameError | None]:
        sink = self._sink(p)
        resend, freed = sink.read(data)
        if freed:
            self._backlog(p)
        return resend, sink.decoder.error

    def ready(self, p: int) -> bool:
        return self._sink(p).ready

    def _sink(self, p: int) -> OutgoingSink:
        sink = self.sinks[p]
        assert sink is not None, "only a pipeline with a sink has an exactly-once sink"
        return sink

    def _backlog(self, p: int) -> None:
        self.flow.sink_backlog(self.plan.pipelines[p].name, self._sink(p).backlog.bytes)

    # -- what resilience keeps, and puts back after a crash --------------------------------

    def acked(self) -> dict[int, dict[Stream, int]]:
        return {p: dict(sink.backlog.acked) for p, sink in enumerate(self.sinks) if sink}

    def backlogs(self) -> dict[int, list[bytes]]:
        return {p: sink.backlog.replay() for p, sink in enumerate(self.sinks) if sink}

    def restore_sink(self, p: int, runs: list[OutputRun]) -> None:
        backlog = self._sink(p).backlog
        backlog.clear()
        backlog.add(runs)
        self._backlog(p)

    def stream_counters(self) -> Counters:
        return {route: (c[0], c[1]) for route, c in self.counters.items()}

    def restore_counters(self, counters: Counters, holds: Callable[[int, int], bool]) -> None:
        """The logged numbering of the streams whose key ``holds(p, key)`` says is held."""
        for (p, key), (epoch, seq) in counters.items():
            if holds(p, key):
                self.counters[(p, key)] = [epoch, seq]

    # -- counts ---------------------------------------------------------------------------

    def unacked(self) -> int:
        """Output records no receiver has acknowledged yet."""
        return sum(sink.backlog.records for sink in self.sinks if sink is not None)

    def leftovers(self) -> list[str]:
        return [f"{sink.backlog.records} output(s) not acknowledged by the receiver of "
                f"{self.plan.pipelines[p].name!r}" for p, sink in enumerate(self.sinks)
                if sink is not None and sink.backlog.records]  # fmt: skip
