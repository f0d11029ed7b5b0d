"""A small run of ``make bench``: the benchmark works and the cluster loses nothing.

Only correctness is checked here (every window arrives, the processes exit
cleanly); the speed targets live in the benchmark itself.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import pathlib
import re
import subprocess
import sys

import pytest

BENCH = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "bench.py"


def test_bench_smoke_run_delivers_every_window(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(BENCH), "--n", "20000", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())
    systems = {r["system"]: r for r in report["results"]}
    assert set(systems) == {"reference", "cluster", "cluster-3", "resilient", "exactly-once",
                            "flink"}  # fmt: skip
    for r in systems.values():
        assert r["missing"] == 0 and r["windows"] == 20_000
        assert r["rate"] > 0 and r["latency_ms"]["p50"] <= r["latency_ms"]["p99.9"]
    for name in ("cluster", "cluster-3", "resilient", "exactly-once"):
        processes = systems[name]["processes"]
        assert processes["initializer"]["exit"] == 0 and processes["worker-2"]["exit"] == 0
        assert processes["initializer"]["peak_rss_mb"] > 0
    assert systems["cluster-3"]["processes"]["worker-3"]["exit"] == 0
    for r in systems.values():  # the CPU of every process while the values flowed
        assert {"sender", "receiver"} <= set(r["processes"])
        for usage in r["processes"].values():
            assert usage["cpu_s_per_million"] >= 0 and 0 <= usage["core_pct"] <= 400
    assert "CPU while the values flowed" in result.stdout and "cluster-3 / cluster" in result.stdout
    assert "cluster / reference" in result.stdout and "resilient / cluster" in result.stdout
    assert "exactly-once / resilient" in result.stdout
    assert systems["flink"]["processes"]["machida-flink"]["exit"] == 0
    assert "flink / cluster" in result.stdout


def test_a_failed_start_kills_what_it_started_and_says_why(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("bench", BENCH)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    started = []

    async def start_then_fail(run, in_port, out):
        started.append(run.spawn("idle", [sys.executable, "-c", "import signal; signal.pause()"]))
        run.spawn("a", [sys.executable, "-c", "raise SystemExit(3)"])
        await run.wait_line("a", "ready")

    monkeypatch.setattr(bench, "start_reference", start_then_fail)
    try:
        with pytest.raises(RuntimeError) as caught:
            asyncio.run(bench.measure("reference", 10, tmp_path))
        assert started[0].poll() is not None, "the idle process was left running"
        assert "reference/a exited (3) before printing 'ready'" in str(caught.value)
    finally:
        started[0].kill()
        started[0].wait()


LATENCY = pathlib.Path(__file__).resolve().parent.parent / "scripts" / "bench_latency.py"


def test_latency_bench_smoke_run_times_every_window(tmp_path):
    out = tmp_path / "results.json"
    result = subprocess.run(
        [sys.executable, str(LATENCY), "--rates", "5000", "--seconds", "1.5",
         "--modes", "reference,plain,exactly-once", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    report = json.loads(out.read_text())["latency"]
    assert [(r["mode"], r["rate"]) for r in report["results"]] == [
        ("reference", 5000),
        ("plain", 5000),
        ("exactly-once", 5000),
    ]
    for r in report["results"]:
        lat = r["latency_ms"]
        assert r["messages"] == 7500 and r["achieved"] > 0
        assert 0 < lat["p50"] <= lat["p99"] <= lat["p99.9"] <= lat["max"]


def test_the_application_code_benchmark_prints_each_callback():
    script = BENCH.parent / "bench_usercode.py"
    result = subprocess.run([sys.executable, str(script), "--n", "2000"], capture_output=True,
                            text=True, timeout=60, cwd=BENCH.parent.parent)  # fmt: skip
    assert result.returncode == 0, result.stderr
    for name in ("payload_length", "decode", "compute_multi", "partition", "compute", "encode"):
        assert re.search(rf"^{name} +\d+\.\d+ µs a call$", result.stdout, re.M), result.stdout
    assert "in the application's own code" in result.stdout
