"""The Metrics UI's model with plain numbers: rates by differencing, restarts, gaps, latency.

Records are made by the runtime's own :class:`machida.metrics.Stats`, so the
model is tested against the real record format; only ``elapsed_s`` is set by
hand to keep the arithmetic exact.
"""

from __future__ import annotations

import json
import math

import pytest

from machida.metrics import BINS, Stats
from metrics_ui.model import (
    HISTORY_S,
    LATENCY_GROUPS,
    LATENCY_WINDOW_S,
    STALE_S,
    TICK_S,
    Model,
    Series,
    latency_summary,
)

P = "Sequence Window"
STEP = "Observe New Value"


class Worker:
    """A fake worker: real Stats, with the clock that ``elapsed_s`` reports under our control."""

    def __init__(self, name: str = "initializer") -> None:
        self.stats = Stats(name)
        self.pipeline = self.stats.pipeline(P)
        self.step = self.stats.step(P, STEP)

    def process(self, n: int, latency_ns: int = 3000, *, source: bool = True) -> None:
        if source:
            self.pipeline.messages_in += n
        else:
            self.pipeline.messages_arrived += n
        self.pipeline.messages_out += n
        self.pipeline.latency.add_many(latency_ns, n)
        self.step.messages_in += n
        self.step.messages_out += n

    def record(self, elapsed: float) -> dict:
        record = self.stats.snapshot()
        record["elapsed_s"] = elapsed
        return record


def test_rates_come_from_two_records_of_one_incarnation():
    model, w = Model(), Worker()
    w.process(100)
    assert model.ingest(w.record(1.0), now=10.0) == "new"
    model.tick(10.1, 1000.0)
    summary = model.summary(10.1, 1000.0)
    assert summary["workers"]["initializer"]["rate"] is None  # one record: no rate yet
    assert summary["workers"]["initializer"]["messages"] == 100
    assert model.series.lines == {}
    w.process(400)
    assert model.ingest(w.record(3.0), now=12.0) == "ok"
    model.tick(12.1, 1002.0)
    summary = model.summary(12.1, 1002.0)
    worker = summary["workers"]["initializer"]
    assert worker["rate"] == pytest.approx(200.0)  # 400 messages over 2 s of elapsed_s
    assert worker["out_rate"] == pytest.approx(200.0)
    assert worker["messages"] == 500 and worker["messages_out"] == 500
    pipeline = summary["pipelines"][P]
    assert pipeline["in_rate"] == pytest.approx(200.0)
    assert pipeline["steps"][STEP]["rate"] == pytest.approx(200.0)
    series = model.series_json()
    assert series["times"] == [1000.0, 1002.0]
    assert series["workers"] == {"initializer": [None, 200.0]}
    assert series["pipelines"] == {P: {"in": [None, 200.0], "out": [None, 200.0]}}
    assert series["steps"] == {P: {STEP: [None, 200.0]}}


def test_worker_messages_count_what_entered_it_from_sources_and_other_workers():
    model, init, other = Model(), Worker("initializer"), Worker("worker-2")
    for elapsed in (1.0, 2.0):
        init.process(100)
        init.pipeline.messages_forwarded += 50
        other.process(50, source=False)
        model.ingest(init.record(elapsed), now=elapsed)
        model.ingest(other.record(elapsed), now=elapsed)
    model.tick(2.0, 2.0)
    summary = model.summary(2.0, 2.0)
    assert summary["workers"]["initializer"]["messages"] == 200
    assert summary["workers"]["worker-2"]["messages"] == 100
    assert summary["workers"]["worker-2"]["rate"] == pytest.approx(50.0)
    pipeline = summary["pipelines"][P]
    assert pipeline["messages_in"] == 200 and pipeline["messages_arrived"] == 100
    assert pipeline["messages_out"] == 300 and pipeline["messages_forwarded"] == 100
    assert pipeline["in_rate"] == pytest.approx(100.0)
    assert pipeline["out_rate"] == pytest.approx(150.0)  # the pipeline's line sums the workers
    assert pipeline["workers"] == ["initializer", "worker-2"]
    assert model.series_json()["pipelines"][P]["out"] == [150.0]


def test_a_restarted_worker_is_not_differenced_across_its_restart():
    model, first = Model(), Worker()
    first.process(1000)
    model.ingest(first.record(5.0), now=5.0)
    first.process(1000)
    model.ingest(first.record(6.0), now=6.0)
    assert model.workers["initializer"].rates is not None
    second = Worker()  # a new process: new pid or started, counting from zero
    second.stats.started = first.stats.started + 7
    second.process(10)
    assert model.ingest(second.record(1.0), now=7.0) == "new"
    worker = model.workers["initializer"]
    assert worker.rates is None and worker.incarnations == 2
    second.process(30)
    model.ingest(second.record(2.0), now=8.0)
    assert worker.rates["worker", "initializer"] == pytest.approx(30.0)
    assert model.summary(8.0, 8.0)["workers"]["initializer"]["messages"] == 40


def test_a_counter_that_goes_down_is_a_restart_too():
    model, w = Model(), Worker()
    w.process(100)
    model.ingest(w.record(1.0), now=1.0)
    w.process(5)
    w.pipeline.messages_out = 3  # same pid and started, but counting again
    assert model.ingest(w.record(2.0), now=2.0) == "new"
    assert model.workers["initializer"].rates is None


def test_a_duplicate_or_older_record_is_ignored_and_a_seq_gap_is_counted():
    model, w = Model(), Worker()
    w.process(10)
    first = w.record(1.0)
    model.ingest(first, now=1.0)
    assert model.ingest(dict(first), now=1.5) == "old"
    w.stats.snapshot()  # a record made and dropped by the worker
    w.process(10)
    model.ingest(w.record(3.0), now=3.0)
    worker = model.summary(3.0, 3.0)["workers"]["initializer"]
    assert worker["records"] == 2 and worker["missed_records"] == 1
    assert worker["rate"] == pytest.approx(5.0)


def test_a_silent_worker_leaves_gaps_not_zeros_and_stays_in_the_summary():
    model, w = Model(), Worker()
    for elapsed in (1.0, 2.0):
        w.process(10)
        model.ingest(w.record(elapsed), now=elapsed)
    model.tick(2.0 + STALE_S, 100.0)  # still live: the last record is exactly STALE_S old
    model.tick(2.1 + STALE_S, 101.0)
    assert model.series_json()["workers"]["initializer"] == [10.0, None]
    worker = model.summary(2.1 + STALE_S, 101.0)["workers"]["initializer"]
    assert worker["live"] is False and worker["rate"] is None and worker["messages"] == 20
    assert model.summary(2.1 + STALE_S, 101.0)["live_workers"] == 0


def test_series_keep_a_fixed_window_and_drop_lines_that_are_only_gaps():
    length = int(HISTORY_S / TICK_S)
    series = Series(length)
    series.append(0.0, {("worker", "a"): 1.0})
    for t in range(1, length):
        series.append(float(t), {("worker", "b"): 2.0})
    assert len(series.times) == length
    assert list(series.lines["worker", "a"])[:2] == [1.0, None]
    assert list(series.lines["worker", "b"])[:2] == [None, 2.0]
    series.append(float(length), {("worker", "b"): 2.0})  # "a"'s only value leaves the window
    assert ("worker", "a") not in series.lines
    assert all(len(line) == len(series.times) for line in series.lines.values())


def test_latency_since_start_and_over_the_last_minute():
    model, w = Model(), Worker()
    w.process(900, latency_ns=3000)  # bin 12
    model.ingest(w.record(100.0), now=100.0)
    w.process(99, latency_ns=1_000_000)  # bin 20
    w.process(1, latency_ns=2**30)  # bin 30
    model.ingest(w.record(100.0 + LATENCY_WINDOW_S), now=100.0 + LATENCY_WINDOW_S)
    summary = model.summary(100.0 + LATENCY_WINDOW_S, 0.0)
    total = summary["pipelines"][P]["latency"]["total"]
    assert total["count"] == 1000
    assert (total["p50"], total["p95"], total["p99"]) == (2**12, 2**20, 2**20)
    assert total["bins"] == {"12": 900, "20": 99, "30": 1}
    recent = summary["pipelines"][P]["latency"]["recent"]  # the first record is a minute old
    assert recent["count"] == 100
    assert (recent["p50"], recent["p95"], recent["p99"]) == (2**20, 2**20, 2**20)
    assert summary["workers"]["initializer"]["latency"]["recent"]["count"] == 100
    later = model.summary(100.0 + 2 * LATENCY_WINDOW_S + 1, 0.0)
    assert later["pipelines"][P]["latency"]["recent"]["count"] == 0
    assert later["pipelines"][P]["latency"]["total"]["count"] == 1000


def test_a_young_worker_s_recent_latency_is_everything_it_counted():
    model, w = Model(), Worker()
    w.process(10, latency_ns=5)
    model.ingest(w.record(2.0), now=2.0)
    recent = model.summary(2.0, 0.0)["pipelines"][P]["latency"]["recent"]
    assert recent["count"] == 10 and recent["p99"] == 8


def test_empty_latency_has_no_percentiles():
    assert latency_summary([0] * BINS) == {
        "count": 0,
        "p50": None,
        "p95": None,
        "p99": None,
        "bins": {},
    }


def test_latency_groups_are_wallaroo_s_even_powers_covering_every_bin_once():
    covered = []
    for _label, first, last in LATENCY_GROUPS:
        covered += range(first, last + 1)
    assert covered == list(range(BINS))
    assert [last for _, _, last in LATENCY_GROUPS][:11] == list(range(10, 31, 2))


@pytest.mark.parametrize(
    "change",
    [
        lambda r: r.pop("worker"),
        lambda r: r.update(worker=""),
        lambda r: r.update(pid="12"),
        lambda r: r.update(seq=True),
        lambda r: r.update(elapsed_s=math.nan),
        lambda r: r.update(started=math.inf),
        lambda r: r["totals"].update(messages_in=-1),
        lambda r: r["pipelines"][P].update(messages_out=1.5),
        lambda r: r["pipelines"][P].update(latency={"-1": 3}),
        lambda r: r["pipelines"][P].update(latency={"x": 3}),
        lambda r: r["pipelines"][P]["steps"].update({STEP: []}),
        lambda r: r.update(pipelines=[]),
    ],
)
def test_malformed_records_are_rejected_without_a_trace(change):
    model, w = Model(), Worker()
    w.process(1)
    record = w.record(1.0)
    change(record)
    assert model.ingest(record, now=1.0) == "rejected"
    assert model.workers == {} and model.rejected == 1


@pytest.mark.parametrize("latency", [{str(BINS): 1}, {"3": -2}, {"3": 0.5}])
def test_records_with_impossible_latency_bins_are_rejected(latency):
    model, w = Model(), Worker()
    w.process(1)
    record = w.record(1.0)
    record["pipelines"][P]["steps"][STEP]["latency"] = latency
    assert model.ingest(record, now=1.0) == "rejected"
    assert model.workers == {} and model.rejected == 1


def test_recent_latency_adds_up_the_workers_and_leaves_their_records_alone():
    model, a, b = Model(), Worker("a"), Worker("b")
    for w in (a, b):
        w.process(5, latency_ns=3000)  # bin 12
        model.ingest(w.record(100.0), now=100.0)
    a.process(2, latency_ns=2**20)
    b.process(3, latency_ns=2**20)
    for w in (a, b):
        model.ingest(w.record(100.0 + LATENCY_WINDOW_S), now=100.0 + LATENCY_WINDOW_S)
    for _ in range(2):  # a second summary sees the same: nothing was merged into a record
        latency = model.summary(100.0 + LATENCY_WINDOW_S, 0.0)["pipelines"][P]["latency"]
        assert latency["recent"]["bins"] == {"20": 5}
        assert latency["total"]["bins"] == {"12": 10, "20": 5}


def test_other_formats_are_skipped():
    model, w = Model(), Worker()
    record = w.record(1.0)
    record["format"] = "machida-metrics/2"
    assert model.ingest(record, now=1.0) == "skipped"
    assert model.ingest([1, 2], now=1.0) == "skipped"
    assert model.skipped == 2 and model.workers == {}


def test_the_summary_is_strict_json():
    model, w = Model(), Worker()
    for elapsed in (1.0, 2.0):
        w.process(7)
        model.ingest(w.record(elapsed), now=elapsed)
        model.tick(elapsed, elapsed)
    for data in (model.summary(2.0, 2.0), model.series_json()):
        assert json.loads(json.dumps(data, allow_nan=False)) == data
