"""``make bench``: end-to-end throughput and latency of the 2-worker cluster, against the bare path.

One run measures these systems with the same sender and a receiver in this
process, one after the other:

* ``cluster``: ``machida`` initializer + ``worker-2`` running sequence_window;
* ``reference``: ``scripts/bench_reference.py``, the faithful bare path (two
  processes calling the application's objects exactly as the API requires,
  and nothing else);
* ``cluster-3``: three workers with ``--state-off-initializer`` (the
  initializer runs the source and ``MaybeOneToMany``; worker-2 and worker-3
  hold one key each);
* ``resilient``: the same cluster with ``--run-with-resilience`` (event log,
  fsync per batch, acknowledgements after the fsync);
* ``exactly-once``: the same cluster with ``--run-with-resilience --exactly-once``
  into the receiving end of ``data_receiver --exactly-once`` (run here: its
  intake and ledger, FILE and marks fsync'd before each acknowledgement); a
  window counts as received once it is durable in FILE;
* ``flink``: ``machida-flink`` (the Flink back end, embedded MiniCluster,
  parallelism 1 unless ``--flink-parallelism`` says otherwise, checkpoints every
  second) running the same application; its RSS includes its JVM's, and its CPU
  seconds include the JVM's (a child it reaps).

The sender is ``sender --interval 0`` (as fast as the socket takes it) writing
``sent.txt``, whose per-batch timestamps give each value's send time. The
receiver (this process) timestamps every read and takes the newest value of
each window in it, so latency is exact per value: receive time of the window
whose newest value is v, minus the send time of v. Peak RSS and CPU seconds per
process come from ``wait4`` (the receiver's CPU seconds are this process's own); during
the run RSS is sampled four times a second
(the soak view). The CPU each process spent while the values flowed (from the sender's start
to the last window, from ``/proc``) is reported per million messages and as a share of one
core, which shows the bottleneck of every run. Prints a table and writes ``bench/results.json``.

Usage: python scripts/bench.py [--n N] [--out bench/results.json] [--only SYSTEM]
       [--systems A,B,...] [--flink-parallelism P]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wallaroo_tools.exactly_once import Intake
from wallaroo_tools.layouts import GILES_HEADER
from wallaroo_tools.ledger import Ledger
from wallaroo_tools.loopback import tool_cmd, unused_port, wait_for_text

HERE = Path(__file__).resolve().parent
NEWEST = re.compile(rb",(\d+)\]")
SENT = re.compile(rb"(\d+), \x00\x00\x00\x08(.{8})\n", re.S)
TIMEOUT_S = 600.0
# What is measured, in this order: the bare path, the runner, the runner with resilience on.
SYSTEMS = ("reference", "cluster", "cluster-3", "resilient", "exactly-once", "flink")
RATIOS = {"ratio": ("cluster", "reference"), "spread_ratio": ("cluster-3", "cluster"),
          "spread_reference_ratio": ("cluster-3", "reference"),
          "resilience_ratio": ("resilient", "cluster"),
          "exactly_once_ratio": ("exactly-once", "resilient"),
          "flink_ratio": ("flink", "cluster")}  # fmt: skip
# machida-flink's --parallelism (--flink-parallelism; 1 unless asked)
FLINK_OPTIONS = {"parallelism": 1}
# RSS is sampled this often (the last five samples are printed: the soak view).
SAMPLE_EVERY_S = 0.25


def expected_windows(n: int) -> int:
    """sequence_window emits n+1 and n+2 early when n is a multiple of 12."""
    return n + {0: 2, 1: 1}.get(n % 12, 0)


class Receiver(asyncio.Protocol):
    """Counts windows and notes, per read, the time (by ``clock``) and the newest value of each
    window."""

    def __init__(self, bench: Run, clock=time.time_ns) -> None:
        self.bench = bench
        self.clock = clock
        self.carry = b""

    def data_received(self, data: bytes) -> None:
        now = self.clock()
        buf = self.carry + data if self.carry else data
        cut = buf.rfind(b"]") + 1
        self.carry = buf[cut:]
        windows_received(self.bench, now, buf[:cut])


def windows_received(bench: Run, now: int, data: bytes) -> None:
    """The windows in ``data`` arrived at ``now``: note the newest value of each."""
    values = NEWEST.findall(data)
    if values:
        bench.reads.append((now, values))
        bench.count += len(values)
        if bench.count >= bench.expected:
            bench.done.set()


async def serve_receiver(run: Run, clock=time.time_ns) -> tuple[asyncio.AbstractServer, str]:
    """The receiving end of ``run``: a counting :class:`Receiver`, or for ``exactly-once``
    the intake and ledger of ``data_receiver --exactly-once`` (a window counts once it is
    durable in FILE). Returns the server and its address."""
    loop = asyncio.get_running_loop()
    if run.name == "exactly-once":
        ledger = Ledger(str(run.dir / "received.txt"))

        def giles(frames: list[bytes]) -> bytes:
            ts, pack = time.time_ns(), GILES_HEADER.pack
            return b"".join([pack(len(f), ts) + f for f in frames])

        def durable(frames: list[bytes]) -> None:
            windows_received(run, clock(), b"".join(frames))

        intake = Intake(ledger, giles, durable, lambda line: print(line, file=sys.stderr))
        server = await loop.create_server(intake.protocol, "127.0.0.1", 0)
    else:
        server = await loop.create_server(lambda: Receiver(run, clock), "127.0.0.1", 0)
    return server, f"127.0.0.1:{server.sockets[0].getsockname()[1]}"


class Run:
    """One system's measurement: its processes, the receiver's reads, and the results."""

    def __init__(self, name: str, n: int, workdir: Path) -> None:
        self.name, self.n, self.dir = name, n, workdir
        self.expected = expected_windows(n)
        self.reads: list[tuple[int, list[bytes]]] = []
        self.count = 0
        self.done = asyncio.Event()
        self.procs: dict[str, subprocess.Popen] = {}
        self.rss_samples: dict[str, list[int]] = {}
        self.peaks: dict[str, int] = {}
        self.external = ""  # the cluster's external channel, for cluster_shutdown

    def log(self, name: str) -> Path:
        return self.dir / f"{self.name}-{name}.log"

    def spawn(self, name: str, argv: list[str]) -> subprocess.Popen:
        with open(self.log(name), "wb") as log:
            proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, cwd=self.dir)
        self.procs[name] = proc
        return proc

    async def wait_line(self, name: str, text: str) -> None:
        await asyncio.to_thread(wait_for_text, self.log(name), text, self.procs[name],
                                time.monotonic() + 60, f"{self.name}/{name}")  # fmt: skip

    def kill(self) -> None:
        """Kill what is still running (after a failure; a measured process is reaped already)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    def sample(self) -> None:
        """RSS now, and the peak so far (VmHWM: wait4's figure would include the fork)."""
        for name, proc in self.procs.items():
            rss, peak = _memory(proc.pid)
            if name == "machida-flink":  # and its JVM (MiniCluster, Python in thread mode)
                for child in _children(proc.pid):
                    more = _memory(child)
                    rss, peak = rss + more[0], peak + more[1]
            if rss:
                self.rss_samples.setdefault(name, []).append(rss)
                self.peaks[name] = max(self.peaks.get(name, 0), peak)

    async def sample_rss(self) -> None:
        while True:
            self.sample()
            await asyncio.sleep(SAMPLE_EVERY_S)


def _memory(pid: int) -> tuple[int, int]:
    found = {}
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    found[line[:5]] = int(line.split()[1]) * 1024
    except OSError:
        pass
    return found.get("VmRSS", 0), found.get("VmHWM", 0)


def _children(pid: int) -> list[int]:
    """Child processes of every thread of ``pid`` (a thread that forks is the child's parent)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        with contextlib.suppress(OSError):
            found += [int(word) for word in (task / "children").read_text().split()]
    return found


async def start_cluster(run: Run, in_port: int, out: str) -> None:
    control, data = unused_port(), unused_port()
    common = ["--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
              "--out", out, "--metrics", f"127.0.0.1:{unused_port()}",
              "--control", f"127.0.0.1:{control}", "--resilience-dir", str(run.dir),
              "--ponythreads=1"]  # fmt: skip
    if run.name in ("resilient", "exactly-once"):
        common.append("--run-with-resilience")
    if run.name == "exactly-once":
        common.append("--exactly-once")
    run.external = f"127.0.0.1:{unused_port()}"
    workers = ["initializer", "worker-2"]
    if run.name == "cluster-3":
        workers.append("worker-3")
        common.append("--state-off-initializer")
    run.spawn("initializer", tool_cmd("machida", *common, "--data", f"127.0.0.1:{data}",
              "--external", run.external, "--worker-count", str(len(workers)),
              "--cluster-initializer"))  # fmt: skip
    for name in workers[1:]:
        run.spawn(name, tool_cmd("machida", *common, "--name", name))
    await run.wait_line("initializer", "Application has successfully initialized.")


async def start_flink(run: Run, in_port: int, out: str) -> None:
    """machida-flink with an embedded MiniCluster (its JVM is a child of this process)."""
    run.external = f"127.0.0.1:{unused_port()}"
    run.spawn("machida-flink", [sys.executable, "-m", "machida_flink", "--application-module",
              "sequence_window", "--in", f"127.0.0.1:{in_port}", "--out", out, "--external",
              run.external, "--resilience-dir", str(run.dir),
              "--parallelism", str(FLINK_OPTIONS["parallelism"])])  # fmt: skip
    await run.wait_line("machida-flink", "Application has successfully initialized.")


STARTERS = {"reference": "start_reference", "cluster": "start_cluster",
            "cluster-3": "start_cluster", "resilient": "start_cluster",
            "exactly-once": "start_cluster",
            "flink": "start_flink"}  # fmt: skip


async def start_reference(run: Run, in_port: int, out: str) -> None:
    out_port, peer = out.rsplit(":", 1)[1], str(unused_port())
    script = str(HERE / "bench_reference.py")
    run.spawn("b", [sys.executable, script, "b", peer, out_port])
    await run.wait_line("b", "ready")
    run.spawn("a", [sys.executable, script, "a", str(in_port), out_port, peer])
    await run.wait_line("a", "ready")


async def measure(name: str, n: int, workdir: Path) -> dict:
    run = Run(name, n, workdir)
    loop = asyncio.get_running_loop()
    server, out = await serve_receiver(run)
    in_port = unused_port()
    sampler = None
    try:
        await globals()[STARTERS[name]](run, in_port, out)
        sampler = loop.create_task(run.sample_rss())
        busy = {pname: _cpu_ticks(proc.pid) for pname, proc in run.procs.items()}
        began, receiving = time.monotonic(), time.process_time()  # this process is the receiver
        sender = run.spawn("sender", tool_cmd("sender", "-h", f"127.0.0.1:{in_port}", "-m",
                           str(n), "-y", "-g", "12", "-u", "-s", "1000", "-i", "0"))  # fmt: skip
        busy["sender"] = 0
        await asyncio.wait_for(run.done.wait(), TIMEOUT_S)
        wall, received = time.monotonic() - began, time.process_time() - receiving
        during = {pname: (_cpu_ticks(proc.pid) - busy[pname]) / TICKS
                  for pname, proc in run.procs.items()}  # fmt: skip
        during["receiver"] = received
        sampler.cancel()
        run.sample()
        receiver = {"exit": 0, "cpu_s": round(received, 2)}
        usage = {"sender": await loop.run_in_executor(None, _wait4, sender)}
        if name != "reference":
            subprocess.run(tool_cmd("cluster_shutdown", run.external), check=True, timeout=30)
        else:
            for proc in run.procs.values():
                if proc is not sender:
                    proc.send_signal(signal.SIGTERM)
        for pname, proc in run.procs.items():
            if proc is not sender:
                usage[pname] = await loop.run_in_executor(None, _wait4, proc)
    finally:
        if sampler is not None:
            sampler.cancel()
        run.kill()
        server.close()
    for pname, peak in run.peaks.items():
        usage[pname]["peak_rss_mb"] = round(peak / 2**20, 1)
    usage["receiver"] = {**receiver, "peak_rss_mb": None}  # this process: not its own
    for pname, seconds in during.items():
        usage[pname]["cpu_s_per_million"] = round(seconds * 1e6 / n, 2)
        usage[pname]["core_pct"] = round(100 * seconds / wall)
    return summarise(run, usage)


# /proc/PID/stat counts CPU time in clock ticks
TICKS = os.sysconf("SC_CLK_TCK")


def _cpu_ticks(pid: int) -> int:
    """User + system CPU ticks of ``pid`` and its descendants (machida-flink's JVM) so far."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
    except OSError:
        return 0
    return int(fields[11]) + int(fields[12]) + sum(_cpu_ticks(c) for c in _children(pid))


def _wait4(proc: subprocess.Popen) -> dict:
    _, status, rusage = os.wait4(proc.pid, 0)
    return {"exit": os.waitstatus_to_exitcode(status),
            "cpu_s": round(rusage.ru_utime + rusage.ru_stime, 2)}  # fmt: skip


def summarise(run: Run, usage: dict) -> dict:
    sent = {}
    for match in SENT.finditer((run.dir / "sent.txt").read_bytes()):
        sent[int.from_bytes(match.group(2), "big")] = int(match.group(1))
    first_send = min(sent.values())
    last_receive = run.reads[-1][0]
    # (with N a multiple of 12 the last window carries N+1 and N+2, which were never sent)
    latencies = sorted(t - sent[int(v)] for t, values in run.reads for v in values
                       if int(v) in sent)  # fmt: skip
    values = sorted(int(v) for _, vs in run.reads for v in vs)
    lost = run.expected - len(set(values))
    seconds = (last_receive - first_send) / 1e9
    return {
        "system": run.name, "messages": run.n, "windows": run.count, "missing": lost,
        "seconds": round(seconds, 3), "rate": round(run.n / seconds),
        "latency_ms": {q: round(_pct(latencies, p) / 1e6, 2)
                       for q, p in (("p50", 0.5), ("p99", 0.99), ("p99.9", 0.999))},
        "processes": usage,
        "rss_samples_mb": {k: [round(x / 2**20, 1) for x in v] for k, v in run.rss_samples.items()},
    }  # fmt: skip


def _mb(peak: float | None) -> str:
    return "-" if peak is None else f"{peak:.0f}"


def _pct(ordered: list[int], q: float) -> int:
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _at(samples: list[float], q: float) -> float:
    return samples[min(len(samples) - 1, int(q * len(samples)))] if samples else 0.0


def table(results: list[dict]) -> str:
    lines = [f"{'system':<10} {'msgs':>10} {'seconds':>8} {'msgs/s':>10} {'p50 ms':>8} "
             f"{'p99 ms':>8} {'p99.9 ms':>9}  processes (peak RSS MB / CPU s)"]  # fmt: skip
    for r in results:
        procs = ", ".join(f"{k} {_mb(v['peak_rss_mb'])}/{v['cpu_s']:.1f}"
                          for k, v in r["processes"].items())  # fmt: skip
        lat = r["latency_ms"]
        lines.append(f"{r['system']:<10} {r['messages']:>10,} {r['seconds']:>8.2f} "
                     f"{r['rate']:>10,} {lat['p50']:>8.1f} {lat['p99']:>8.1f} "
                     f"{lat['p99.9']:>9.1f}  {procs}")  # fmt: skip
    lines.append("CPU while the values flowed: user+sys seconds per million messages "
                 "(% of one core)")  # fmt: skip
    for r in results:
        lines.append(f"{r['system']:<10} " + ", ".join(
            f"{k} {v['cpu_s_per_million']:.2f} ({v['core_pct']}%)"
            for k, v in r["processes"].items()))  # fmt: skip
    return "\n".join(lines)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=lambda s: int(s.replace("_", "")), default=1_000_000)
    parser.add_argument("--out", default="bench/results.json")
    parser.add_argument("--only", choices=SYSTEMS)
    parser.add_argument("--systems", default=",".join(SYSTEMS), help="which, in this order")
    parser.add_argument("--flink-parallelism", type=int, default=1, metavar="P")
    opts = parser.parse_args()
    FLINK_OPTIONS["parallelism"] = opts.flink_parallelism
    results = []
    for name in [opts.only] if opts.only else opts.systems.split(","):
        if name not in SYSTEMS:
            parser.error(f"no system {name!r}: choose among {', '.join(SYSTEMS)}")
        workdir = Path(tempfile.mkdtemp(prefix=f"bench-{name}-"))
        try:
            results.append(await measure(name, opts.n, workdir))
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
    print(table(results))
    report = {"n": opts.n, "cpus": os.cpu_count(), "results": results}
    rates = {r["system"]: r["rate"] for r in results}
    for key, (top, bottom) in RATIOS.items():
        if top in rates and bottom in rates:
            report[key] = round(rates[top] / rates[bottom], 3)
            print(f"{top} / {bottom} = {report[key]:.2f}")
    for r in results:
        if r["system"] != "reference":
            print(f"{r['system']} RSS over the run (MB, at 10% / 50% / 100% of it): " + ", ".join(
                f"{name} {_at(v, 0.1)} / {_at(v, 0.5)} / {_at(v, 1.0)}"
                for name, v in r["rss_samples_mb"].items() if name != "sender"
            ))  # fmt: skip
    Path(opts.out).parent.mkdir(parents=True, exist_ok=True)
    Path(opts.out).write_text(json.dumps(report, indent=2))
    print(f"written {opts.out}")
    return 0 if all(r["missing"] == 0 for r in results) else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
