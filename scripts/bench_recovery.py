"""Recovery from a long event log: a worker's memory while it replays 1 GB, against a normal run.

The 2-worker resilient cluster of ``make bench`` runs sequence_window over
20,000 values; its peak RSS is noted and both workers are stopped with SIGTERM,
which keeps their recovery files. The initializer's event log is then grown to
``--gigabytes`` with commits like the ones it writes under load (a snapshot of
its key, a batch of 1,000 values forwarded to worker-2 and its
acknowledgement, numbered on from where the log ends), and both are started
again with their own commands and ``--event-log-limit`` above the log's size,
so that what is measured is the replay alone. Prints the log's size, how long
the initializer took to print ``|~~ - Recovery COMPLETE - ~~|``, and its peak
RSS (VmHWM) then, against the normal run's.

Usage: python scripts/bench_recovery.py [--gigabytes 1.0]
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machida.app.loader import load_plan
from machida.durability.eventlog import encode_commit, read_log
from machida.testing import DEFAULT_ARGS
from machida.wire.boundary import INTS, encode_batch
from wallaroo_tools.loopback import tool_cmd, unused_port, wait_for_text

BATCH = 1000
LIMIT = str(8 * 1024**3)  # above any log this script writes: the replay alone is measured


def peak_rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmHWM for {pid}")


class Cluster:
    def __init__(self, workdir: Path) -> None:
        self.dir = workdir
        self.procs: dict[str, subprocess.Popen] = {}
        ports = {name: unused_port() for name in ("in", "out", "control", "data", "ext")}
        self.in_port = ports["in"]
        self.external = f"127.0.0.1:{ports['ext']}"
        self.common = ["--application-module", "sequence_window", "--in",
                       f"127.0.0.1:{ports['in']}", "--out", f"127.0.0.1:{ports['out']}",
                       "--metrics", f"127.0.0.1:{unused_port()}", "--control",
                       f"127.0.0.1:{ports['control']}", "--resilience-dir", str(workdir),
                       "--run-with-resilience", "--event-log-limit", LIMIT]  # fmt: skip
        self.commands = {
            "initializer": [*self.common, "--data", f"127.0.0.1:{ports['data']}", "--external",
                            self.external, "--worker-count", "2", "--cluster-initializer"],
            "worker-2": [*self.common, "--name", "worker-2"],
        }  # fmt: skip
        self.receiver = subprocess.Popen(
            tool_cmd("data_receiver", "--listen", f"127.0.0.1:{ports['out']}", "--framed",
                     "--no-write"), cwd=workdir)  # fmt: skip

    def start(self, run: str) -> None:
        for name, args in self.commands.items():
            with open(self.dir / f"{run}-{name}.log", "wb") as log:
                self.procs[name] = subprocess.Popen(
                    tool_cmd("machida", *args), stdout=log, stderr=subprocess.STDOUT, cwd=self.dir
                )

    def wait(self, run: str, name: str, text: str, seconds: float = 600) -> None:
        wait_for_text(self.dir / f"{run}-{name}.log", text, self.procs[name],
                      time.monotonic() + seconds, name)  # fmt: skip

    def stop(self) -> None:
        for proc in self.procs.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)

    def close(self) -> None:
        for proc in [*self.procs.values(), self.receiver]:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def grow_log(path: Path, target: int, fingerprint: str) -> int:
    """Append commits like the initializer's until ``path`` holds ``target`` bytes."""
    replay = read_log(str(path), "sequence_window", "initializer", fingerprint)
    seq = replay.links["worker-2"].next_seq
    snapshot = replay.snapshots[("Sequence Window", 0)]  # its key's state, as it logs it
    commits = 0
    with open(path, "ab") as log:
        while log.tell() < target:
            values = list(range(seq, seq + BATCH))
            frame = encode_batch(seq, [[(0, 1, 1), INTS, values]])
            log.write(encode_commit([("Sequence Window", 0, snapshot)],
                                    forwarded=[("worker-2", seq, BATCH, frame)],
                                    acked={"worker-2": seq + BATCH - 1}))  # fmt: skip
            seq += BATCH
            commits += 1
        log.flush()
        os.fsync(log.fileno())
    return commits


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gigabytes", type=float, default=1.0)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-recovery-") as tmp:
        cluster = Cluster(Path(tmp))
        try:
            cluster.start("normal")
            cluster.wait("normal", "initializer", "Application has successfully initialized.")
            subprocess.run(tool_cmd("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m",
                                    "20000", "-y", "-g", "12", "-u", "-s", "100", "-i",
                                    "2_000_000"), check=True, cwd=tmp)  # fmt: skip
            normal = peak_rss_mb(cluster.procs["initializer"].pid)
            cluster.stop()
            log = Path(tmp) / "sequence_window-initializer.evlog"
            fingerprint = load_plan("sequence_window", list(DEFAULT_ARGS))[1].fingerprint(True)
            commits = grow_log(log, int(opts.gigabytes * 1024**3), fingerprint)
            size = log.stat().st_size
            start = time.monotonic()
            cluster.start("recovery")
            cluster.wait("recovery", "initializer", "|~~ - Recovery COMPLETE - ~~|")
            seconds = time.monotonic() - start
            recovering = peak_rss_mb(cluster.procs["initializer"].pid)
            replayed = [line for line in (Path(tmp) / "recovery-initializer.log").read_text()
                        .splitlines() if line.startswith("RESILIENCE: Replayed")]  # fmt: skip
            cluster.stop()
        finally:
            cluster.close()
    print(f"event log: {size / 1024**3:.2f} GiB ({commits:,} commits appended); {replayed[0]}")
    print(f"initializer peak RSS: normal run {normal:.1f} MB, recovering {recovering:.1f} MB "
          f"(+{recovering - normal:.1f} MB); recovery took {seconds:.1f} s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
