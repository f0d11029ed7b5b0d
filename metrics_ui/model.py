"""What the Metrics UI knows: stats records in; rates, series and latency percentiles out.

No I/O and no clock of its own: the server passes ``now`` (monotonic seconds)
and ``wall`` (Unix seconds), so every rule here is tested with plain numbers.
Records follow ``docs/metrics.md``: counters are cumulative per worker
*incarnation* (``worker``, ``started``, ``pid``), so a worker's rates come from
differencing its two latest records of one incarnation by their ``elapsed_s``;
a new incarnation, or a counter that went down, starts again from its first
record. Every :data:`TICK_S` the server calls :meth:`Model.tick`, which
appends one point per chart line (per worker, per pipeline in and out, per
step) to :class:`Series`, a fixed window of :data:`HISTORY_S`. A worker whose
last record is older than :data:`STALE_S` counts as gone: its lines get gaps,
not zeros, because nobody knows its rate. Latency is reported since each
worker started and over the last :data:`LATENCY_WINDOW_S`, in power-of-two
bins with p50 / p95 / p99.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass
from typing import Any

from machida.metrics.stats import BINS, PIPELINE_COUNTERS, Histogram
from machida.wire.records import FORMAT

# How far back the charts reach, and their resolution: 300 points a line.
HISTORY_S = 300.0
TICK_S = 1.0
# Workers send a record about every second; three seconds of silence is a lost worker
# (or a lost receiver), not one late record.
STALE_S = 3.0
# "Recent" latency: messages that left a worker during the last minute.
LATENCY_WINDOW_S = 60.0
PERCENTILES = (("p50", 0.5), ("p95", 0.95), ("p99", 0.99))

# Wallaroo's Metrics UI grouped the power-of-two bins by even powers (docs/metrics.md).
# (label, first bin, last bin), bins inclusive.
LATENCY_GROUPS = (
    ("\u2264 1 \u00b5s", 0, 10),
    ("\u2264 4 \u00b5s", 11, 12),
    ("\u2264 16 \u00b5s", 13, 14),
    ("\u2264 66 \u00b5s", 15, 16),
    ("\u2264 260 \u00b5s", 17, 18),
    ("\u2264 1 ms", 19, 20),
    ("\u2264 4 ms", 21, 22),
    ("\u2264 16 ms", 23, 24),
    ("\u2264 66 ms", 25, 26),
    ("\u2264 260 ms", 27, 28),
    ("\u2264 1 s", 29, 30),
    ("> 1 s", 31, BINS - 1),
)

Key = tuple  # a chart line: ("worker", w), ("pipeline", p, "in"|"out"), ("step", p, s)


# -- records ---------------------------------------------------------------------------------


def _count(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"not a counter: {value!r}")
    return value


def _number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


@dataclass
class Step:
    messages_in: int
    messages_out: int
    latency: Histogram


@dataclass
class Pipeline:
    counts: dict[str, int]  # the four disjoint counters of docs/metrics.md
    latency: Histogram
    steps: dict[str, Step]


@dataclass
class Sample:
    """One record, checked and normalized: counters as ints, histograms as :class:`Histogram`."""

    worker: str
    pid: int
    started: float
    elapsed: float
    seq: int
    time: float
    counts: dict[str, int]
    latency: Histogram
    pipelines: dict[str, Pipeline]
    stream: dict[str, int]

    @property
    def incarnation(self) -> tuple[float, int]:
        return (self.started, self.pid)

    @property
    def messages(self) -> int:
        """Messages that entered this worker: from its sources or from other workers."""
        return self.counts["messages_in"] + self.counts["messages_arrived"]

    def flows(self) -> dict[Key, int]:
        """The counters the charts show as rates, by chart line."""
        flows: dict[Key, int] = {("worker", self.worker): self.messages}
        for name, p in self.pipelines.items():
            flows["pipeline", name, "in"] = p.counts["messages_in"]
            flows["pipeline", name, "out"] = p.counts["messages_out"]
            for step_name, step in p.steps.items():
                flows["step", name, step_name] = step.messages_in
        return flows

    def monotone_counts(self) -> dict[Key, int]:
        """Every counter that only grows within an incarnation (a drop means a restart)."""
        counts: dict[Key, int] = {("totals", k): v for k, v in self.counts.items()}
        for name, p in self.pipelines.items():
            counts.update({("pipeline", name, k): v for k, v in p.counts.items()})
            for step_name, step in p.steps.items():
                counts["step", name, step_name, "in"] = step.messages_in
                counts["step", name, step_name, "out"] = step.messages_out
        return counts


def _pipeline(data: Any) -> Pipeline:
    counts = {k: _count(data.get(k, 0)) for k in PIPELINE_COUNTERS}
    steps = {}
    for name, step in data.get("steps", {}).items():
        steps[str(name)] = Step(
            _count(step.get("messages_in", 0)),
            _count(step.get("messages_out", 0)),
            Histogram.from_json(step.get("latency", {})),
        )
    return Pipeline(counts, Histogram.from_json(data.get("latency", {})), steps)


def parse_record(record: dict[str, Any]) -> Sample:
    """A record of format :data:`FORMAT` as a :class:`Sample`; ValueError, KeyError, ... if bad."""
    worker = record["worker"]
    if not isinstance(worker, str) or not worker:
        raise ValueError(f"bad worker name {worker!r}")
    totals = record["totals"]
    stream = record.get("stream", {})
    return Sample(
        worker=worker,
        pid=_count(record["pid"]),
        started=_number(record["started"]),
        elapsed=_number(record["elapsed_s"]),
        seq=_count(record["seq"]),
        time=_number(record.get("time", 0.0)),
        counts={k: _count(totals.get(k, 0)) for k in PIPELINE_COUNTERS},
        latency=Histogram.from_json(totals.get("latency", {})),
        pipelines={str(k): _pipeline(v) for k, v in record["pipelines"].items()},
        stream={k: _count(v) for k, v in stream.items() if isinstance(v, int)},
    )


# -- latency ---------------------------------------------------------------------------------


def _minus(newer: Histogram, older: Histogram | None) -> Histogram:
    return newer if older is None else newer.minus(older)


def latency_summary(counts: list[int]) -> dict[str, Any]:
    """Count, p50 / p95 / p99 (upper bin bounds, ns; ``None`` when empty) and sparse bins."""
    histogram = Histogram(counts)
    summary: dict[str, Any] = {"count": histogram.count}
    for name, q in PERCENTILES:
        summary[name] = histogram.percentile(q)
    summary["bins"] = histogram.to_json()
    return summary


# -- workers ---------------------------------------------------------------------------------


class Worker:
    """What the UI holds about one worker name: its latest record, rates and recent history."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.latest: Sample | None = None
        self.last_arrival = float("-inf")
        self.rates: dict[Key, float] | None = None
        self.out_rate: float | None = None
        # (arrival, sample) of this incarnation, the oldest at or before the latency window
        self.history: deque[tuple[float, Sample]] = deque()
        self.records = 0
        self.missed = 0
        self.incarnations = 0

    def live(self, now: float) -> bool:
        return now - self.last_arrival <= STALE_S

    def accept(self, sample: Sample, now: float) -> str:
        """Take a record: ``"new"`` (first of an incarnation), ``"ok"``, or ``"old"`` (ignored)."""
        prev = self.latest
        restarted = prev is None or prev.incarnation != sample.incarnation
        if not restarted:
            assert prev is not None
            if sample.seq <= prev.seq:
                return "old"  # a duplicate or a late record; the newer one already counted
            before = prev.monotone_counts()
            now_counts = sample.monotone_counts()
            restarted = any(now_counts.get(k, 0) < v for k, v in before.items())
        self.records += 1
        self.latest, self.last_arrival = sample, now
        if restarted:
            self.incarnations += 1
            self.rates, self.out_rate = None, None
            self.history.clear()
            self.history.append((now, sample))
            return "new"
        assert prev is not None
        self.missed += sample.seq - prev.seq - 1
        dt = sample.elapsed - prev.elapsed
        if dt > 0:
            old = prev.flows()
            self.rates = {k: (v - old.get(k, 0)) / dt for k, v in sample.flows().items()}
            out = sample.counts["messages_out"] - prev.counts["messages_out"]
            self.out_rate = out / dt
        self.history.append((now, sample))
        while len(self.history) > 1 and self.history[1][0] <= now - LATENCY_WINDOW_S:
            self.history.popleft()
        return "ok"

    def recent_base(self, now: float) -> Sample | None:
        """The record to subtract for the last minute's latency (``None``: since start)."""
        latest = self.latest
        assert latest is not None
        if latest.elapsed <= LATENCY_WINDOW_S:
            return None  # everything this incarnation counted is recent
        base = self.history[0][1]
        for arrival, sample in self.history:
            if arrival > now - LATENCY_WINDOW_S:
                break
            base = sample
        return base


# -- series ----------------------------------------------------------------------------------


class Series:
    """The charts' data: tick times and, per line, one value or ``None`` (a gap) per tick.

    Every line has exactly as many values as there are times. A line that
    appears late is padded with gaps; a line with nothing but gaps left in the
    window is dropped.
    """

    def __init__(self, length: int) -> None:
        self.length = length
        self.times: deque[float] = deque(maxlen=length)
        self.lines: dict[Key, deque[float | None]] = {}

    def append(self, wall: float, values: dict[Key, float]) -> None:
        for key in values:
            if key not in self.lines:
                self.lines[key] = deque([None] * len(self.times), maxlen=self.length)
        self.times.append(wall)
        for key, line in list(self.lines.items()):
            line.append(values.get(key))
            if key not in values and all(v is None for v in line):
                del self.lines[key]

    def to_json(self) -> dict[str, Any]:
        workers: dict[str, list] = {}
        pipelines: dict[str, dict[str, list]] = {}
        steps: dict[str, dict[str, list]] = {}
        for key, line in sorted(self.lines.items()):
            values = [None if v is None else round(v, 3) for v in line]
            if key[0] == "worker":
                workers[key[1]] = values
            elif key[0] == "pipeline":
                pipelines.setdefault(key[1], {})[key[2]] = values
            else:
                steps.setdefault(key[1], {})[key[2]] = values
        return {
            "times": [round(t, 3) for t in self.times],
            "workers": workers,
            "pipelines": pipelines,
            "steps": steps,
        }


# -- the model -------------------------------------------------------------------------------


class Model:
    """Every worker's state and the chart series, fed by :meth:`ingest` and :meth:`tick`."""

    def __init__(self) -> None:
        self.workers: dict[str, Worker] = {}
        self.series = Series(int(HISTORY_S / TICK_S))
        self.records = 0
        self.skipped = 0
        self.rejected = 0
        self.last_tick: float | None = None

    def ingest(self, record: Any, now: float) -> str:
        """One record: ``"new"``, ``"ok"``, ``"old"``, ``"skipped"`` (unknown format) or
        ``"rejected"`` (malformed)."""
        if not isinstance(record, dict) or record.get("format") != FORMAT:
            self.skipped += 1
            return "skipped"
        try:
            sample = parse_record(record)
        except (KeyError, TypeError, ValueError, AttributeError):
            self.rejected += 1
            return "rejected"
        self.records += 1
        worker = self.workers.get(sample.worker)
        if worker is None:
            worker = self.workers[sample.worker] = Worker(sample.worker)
        return worker.accept(sample, now)

    def tick(self, now: float, wall: float) -> None:
        """One point on every chart line: the live workers' latest rates, summed per line."""
        values: dict[Key, float] = {}
        for worker in self.workers.values():
            if worker.rates is None or not worker.live(now):
                continue
            for key, rate in worker.rates.items():
                values[key] = values.get(key, 0.0) + rate
        self.series.append(wall, values)
        self.last_tick = wall

    def series_json(self) -> dict[str, Any]:
        return {
            "time": self.last_tick,
            "tick_s": TICK_S,
            "history_s": HISTORY_S,
            **self.series.to_json(),
        }

    def summary(self, now: float, wall: float) -> dict[str, Any]:
        """Totals, current rates and latency of every worker, pipeline and step."""
        workers = {}
        pipelines: dict[str, dict[str, Any]] = {}
        for name in sorted(self.workers):
            worker = self.workers[name]
            latest = worker.latest
            assert latest is not None
            live = worker.live(now)
            rates = worker.rates if live and worker.rates is not None else {}
            base = worker.recent_base(now)
            recent_total = (
                _minus(latest.latency, base.latency if base else None)
                if now - worker.last_arrival <= LATENCY_WINDOW_S
                else Histogram()
            )
            workers[name] = {
                "messages": latest.messages,
                **latest.counts,
                "rate": rates.get(("worker", name)),
                "out_rate": worker.out_rate if live else None,
                "live": live,
                "last_seen_s": round(now - worker.last_arrival, 3),
                "pid": latest.pid,
                "started": latest.started,
                "uptime_s": round(latest.elapsed, 3),
                "seq": latest.seq,
                "records": worker.records,
                "missed_records": worker.missed,
                "incarnations": worker.incarnations,
                "stream": latest.stream,
                "pipelines": sorted(latest.pipelines),
                "latency": {
                    "recent": latency_summary(recent_total.counts),
                    "total": latency_summary(latest.latency.counts),
                },
            }
            for pname, p in latest.pipelines.items():
                self._add_pipeline(pipelines, pname, p, worker, rates, base, now)
        for p in pipelines.values():
            for part in [p, *p["steps"].values()]:
                part["latency"] = {k: latency_summary(v.counts) for k, v in part["latency"].items()}
        return {
            "format": "metrics-ui/1",
            "time": wall,
            "records": self.records,
            "skipped": self.skipped,
            "rejected": self.rejected,
            "live_workers": sum(1 for w in self.workers.values() if w.live(now)),
            "stale_s": STALE_S,
            "latency_window_s": LATENCY_WINDOW_S,
            "latency_groups": [
                {"label": label, "first_bin": first, "last_bin": last}
                for label, first, last in LATENCY_GROUPS
            ],
            "workers": workers,
            "pipelines": dict(sorted(pipelines.items())),
        }

    @staticmethod
    def _add_pipeline(
        pipelines: dict[str, dict[str, Any]],
        name: str,
        p: Pipeline,
        worker: Worker,
        rates: dict[Key, float],
        base: Sample | None,
        now: float,
    ) -> None:
        """Add one worker's share of pipeline ``name`` into the cluster-wide entry."""
        entry = pipelines.setdefault(
            name,
            {
                **dict.fromkeys(PIPELINE_COUNTERS, 0),
                "in_rate": None,
                "out_rate": None,
                "workers": [],
                "latency": {"recent": Histogram(), "total": Histogram()},
                "steps": {},
            },
        )
        recent = now - worker.last_arrival <= LATENCY_WINDOW_S
        base_p = base.pipelines.get(name) if base is not None else None
        entry["workers"].append(worker.name)
        for counter in PIPELINE_COUNTERS:
            entry[counter] += p.counts[counter]
        for field, key in (("in_rate", "in"), ("out_rate", "out")):
            rate = rates.get(("pipeline", name, key))
            if rate is not None:
                entry[field] = (entry[field] or 0.0) + rate
        entry["latency"]["total"].merge(p.latency)
        if recent:
            entry["latency"]["recent"].merge(_minus(p.latency, base_p.latency if base_p else None))
        for sname, step in p.steps.items():
            s = entry["steps"].setdefault(
                sname,
                {
                    "messages_in": 0,
                    "messages_out": 0,
                    "rate": None,
                    "latency": {"recent": Histogram(), "total": Histogram()},
                },
            )
            s["messages_in"] += step.messages_in
            s["messages_out"] += step.messages_out
            rate = rates.get(("step", name, sname))
            if rate is not None:
                s["rate"] = (s["rate"] or 0.0) + rate
            s["latency"]["total"].merge(step.latency)
            if recent:
                base_s = base_p.steps.get(sname) if base_p is not None else None
                older = base_s.latency if base_s is not None else None
                s["latency"]["recent"].merge(_minus(step.latency, older))
