"""The counters a worker's runtime bumps, and the latency histogram; no I/O.

Every worker owns one :class:`Stats`. The runtime asks it once for the
counter objects of each pipeline and step (:meth:`Stats.pipeline`,
:meth:`Stats.step`), keeps direct references, and bumps plain integer
attributes on the hot path; latencies go into power-of-two
:class:`Histogram` bins. Nothing here awaits or locks.
:meth:`Stats.snapshot` is the record the metrics client streams out
(``docs/metrics.md``).
"""

from __future__ import annotations

import math
import os
import time
from typing import Any

from machida.wire.records import FORMAT

# 64 bins of 2**i ns reach 2**63 ns (292 years); every latency fits, the last bin catches the rest.
BINS = 64


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
    counts nothing). Steps are not timed: two clock reads per message per step
    would cost the hot path more than the numbers are worth; the pipeline's
    latency (:class:`PipelineStats`) is timed per batch instead.
    """

    __slots__ = ("messages_in", "messages_out", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self.messages_in = 0
        self.messages_out = 0

    def snapshot(self) -> dict[str, Any]:
        return {"messages_in": self.messages_in, "messages_out": self.messages_out}


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
