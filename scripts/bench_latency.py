"""``make bench-latency``: how long from a value entering the cluster to its window leaving it.

For each input rate (10k, 50k, 100k and 200k msgs/s by default) and each mode
(the faithful bare-path reference of ``make bench``, which shows what this
machine allows; the cluster; the cluster with resilience on; the cluster with
``--exactly-once`` into the receiving end of ``data_receiver --exactly-once``,
where a window arrives once it is durable in FILE) this starts the
2-worker cluster of ``make bench`` (or the reference), feeds it with
``scripts/bench_pace.py`` (a batch every millisecond, each batch's send time
kept, sleeping between batches) and
timestamps every read of the cluster's output here. The latency of value v is
the arrival time of the window whose newest value is v, minus the send time of
v; both clocks are CLOCK_MONOTONIC. Values 12k+1 and 12k+2 are left out: the
application's one-to-many step emits their windows together with 12k's,
before they are even sent. So are the values of the first half second (the
warm-up: the first reads of a source build its steps). Prints p50/p99/p99.9/max
per rate and adds them to ``bench/results.json`` under ``"latency"``.

Usage: python scripts/bench_latency.py [--rates 10000,50000,...] [--seconds S] [--modes ...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import signal
import subprocess
import sys
import tempfile
import time
from array import array
from pathlib import Path

from wallaroo_tools.loopback import tool_cmd, unused_port

from bench import Run, serve_receiver, start_cluster, start_reference

HERE = Path(__file__).resolve().parent
RATES = (10_000, 50_000, 100_000, 200_000)
# mode -> the system of make bench it runs: the faithful bare path (the machine's floor, measured
# the same way), the cluster, the cluster with resilience on.
MODES = {"reference": "reference", "plain": "cluster", "resilient": "resilient",
         "exactly-once": "exactly-once"}  # fmt: skip
TIMEOUT_S = 120.0
WARMUP_NS = 500_000_000


async def measure(mode: str, rate: int, seconds: float, workdir: Path) -> dict:
    per_tick = max(1, rate // 1000)
    n = int(seconds * 1000) * per_tick
    run = Run(MODES[mode], n, workdir / f"{mode}-{rate}")
    run.dir.mkdir()
    loop = asyncio.get_running_loop()
    server, out = await serve_receiver(run, clock=time.monotonic_ns)  # the pacer's clock
    in_port = unused_port()
    stamps_file = run.dir / "stamps.bin"
    try:
        start = start_reference if mode == "reference" else start_cluster
        await start(run, in_port, out)
        run.spawn("pace", [sys.executable, str(HERE / "bench_pace.py"), "--host",
                   f"127.0.0.1:{in_port}", "--rate", str(rate), "--seconds", str(seconds),
                   "--out", str(stamps_file)])  # fmt: skip
        await asyncio.wait_for(run.done.wait(), TIMEOUT_S)
        await run.wait_line("pace", "sent ")
        if mode == "reference":
            for name in ("a", "b"):
                run.procs[name].send_signal(signal.SIGTERM)
        else:
            subprocess.run(tool_cmd("cluster_shutdown", run.external), check=True, timeout=30)
        for proc in run.procs.values():
            await loop.run_in_executor(None, proc.wait)
    finally:
        run.kill()
        server.close()
    stamps = array("q")
    stamps.frombytes(stamps_file.read_bytes())
    return summarise(mode, rate, run, stamps, per_tick)


def summarise(mode: str, rate: int, run: Run, stamps: array, per_tick: int) -> dict:
    counted = stamps[0] + WARMUP_NS
    latencies = sorted(
        t - stamps[(v - 1) // per_tick]
        for t, values in run.reads
        for v in map(int, values)
        if v % 12 not in (1, 2) and stamps[(v - 1) // per_tick] >= counted
    )
    seconds = (run.reads[-1][0] - stamps[0]) / 1e9
    return {
        "mode": mode, "rate": rate, "messages": run.n, "achieved": round(run.n / seconds),
        "latency_ms": {name: round(_at(latencies, q) / 1e6, 3)
                       for name, q in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999),
                                       ("max", 1.0))},
    }  # fmt: skip


def _at(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def table(results: list[dict]) -> str:
    lines = [f"{'mode':<10} {'rate':>8} {'achieved':>9} {'p50 ms':>8} {'p99 ms':>8} "
             f"{'p99.9 ms':>9} {'max ms':>8}"]  # fmt: skip
    for r in results:
        lat = r["latency_ms"]
        lines.append(f"{r['mode']:<10} {r['rate']:>8,} {r['achieved']:>9,} {lat['p50']:>8.3f} "
                     f"{lat['p99']:>8.3f} {lat['p99.9']:>9.3f} {lat['max']:>8.3f}")  # fmt: skip
    return "\n".join(lines)


async def main() -> int:
    # This process timestamps arrivals: its own collector must not pause it mid-run (what it
    # keeps is freed at the end anyway).
    gc.disable()
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default=",".join(map(str, RATES)))
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--out", default="bench/results.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        for mode in args.modes.split(","):
            for rate in map(int, args.rates.replace("_", "").split(",")):
                result = await measure(mode, rate, args.seconds, Path(tmp))
                results.append(result)
                print(table([result]).splitlines()[-1], flush=True)
    print(table(results))
    out = Path(args.out)
    report = json.loads(out.read_text()) if out.exists() else {}
    report["latency"] = {"seconds_per_rate": args.seconds, "results": results}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
