"""``make bench``: how long processing pauses while a running cluster grows and shrinks.

For each shape of application (how many keys, how large each key's state), an
initializer runs alone with resilience on (so every handover is made durable on
both sides) and ``--stop-pause 0``; every key's state is touched first. Then,
``--rounds`` times, a worker joins with ``machida --join`` and later leaves with
``cluster_shrinker``. The pause is what the source sees: from the initializer's
``~~~Stopping message processing ...~~~`` line (it stops reading the sources) to
its ``~~~Resuming message processing.~~~`` line (it reads them again), each line
timestamped as this process reads it. A grow moves half the keys to the joiner,
a shrink moves them back. Prints p50 and max per shape and writes
``bench/autoscale.json``.

Usage: python scripts/bench_autoscale.py [--rounds 20] [--out bench/autoscale.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from wallaroo_tools.loopback import tool_cmd, unused_port

STOPPING = "~~~Stopping message processing"
RESUMED = "~~~Resuming message processing.~~~"
TIMEOUT_S = 60.0
# (keys, bytes of state per key): the 2-key shape of sequence_window, many small states,
# fewer large ones (10 MB in all).
SHAPES = ((2, 64), (1_000, 64), (100, 100_000))
APP = """
import struct, wallaroo

class Decoder(object):
    def header_length(self):
        return 4
    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]
    def decode(self, bs):
        return struct.unpack(">Q", bs)[0]

class ByKey(object):
    def partition(self, v):
        return v % {keys}

class Blob(object):
    def __init__(self):
        self.data = bytes({size})
        self.count = 0

class Touch(object):
    def compute(self, v, blob):
        blob.count += 1
        return (blob.count, True)

class Builder(object):
    def build(self):
        return Blob()

class Encoder(object):
    def encode(self, count):
        return struct.pack(">I", 8) + struct.pack(">Q", count)

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("Autoscale bench")
    ab.new_pipeline("Values", wallaroo.TCPSourceConfig("127.0.0.1", "{port}", Decoder()))
    ab.to_state_partition(Touch(), Builder(), "blobs", ByKey(), list(range({keys})))
    ab.to_sink(wallaroo.TCPSinkConfig("127.0.0.1", "{sink}", Encoder()))
    return ab.build()
"""


class Lines:
    """A child's stdout lines, each with the time this process read it."""

    def __init__(self, proc: subprocess.Popen) -> None:
        self.lines: list[tuple[float, str]] = []
        self.changed = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen) -> None:
        for raw in proc.stdout:
            with self.changed:
                self.lines.append((time.monotonic(), raw.decode(errors="replace").rstrip()))
                self.changed.notify_all()

    def wait(self, text: str, count: int) -> float:
        """The time of the ``count``-th line that holds ``text``."""
        deadline = time.monotonic() + TIMEOUT_S
        with self.changed:
            while True:
                found = [t for t, line in self.lines if text in line]
                if len(found) >= count:
                    return found[count - 1]
                if not self.changed.wait(max(0.0, deadline - time.monotonic())):
                    tail = "\n".join(line for _, line in self.lines[-20:])
                    raise RuntimeError(f"no {count} line(s) with {text!r}:\n{tail}")


def shape_run(keys: int, size: int, rounds: int, work: Path) -> dict:
    port, sink, control = unused_port(), unused_port(), unused_port()
    external = unused_port()
    (work / "bench_autoscale_app.py").write_text(
        APP.format(keys=keys, size=size, port=port, sink=sink))  # fmt: skip
    common = ["--application-module", "bench_autoscale_app", "--metrics",
              f"127.0.0.1:{unused_port()}", "--resilience-dir", str(work),
              "--run-with-resilience", "--stop-pause", "0"]  # fmt: skip
    procs = []
    try:
        receiver = subprocess.Popen(tool_cmd("data_receiver", "-l", f"127.0.0.1:{sink}"),
                                    cwd=work, stdout=subprocess.DEVNULL)  # fmt: skip
        procs.append(receiver)
        init = subprocess.Popen(
            [*tool_cmd("machida"), *common, "--cluster-initializer", "--worker-count", "1",
             "--control", f"127.0.0.1:{control}", "--data", f"127.0.0.1:{unused_port()}",
             "--external", f"127.0.0.1:{external}"],
            cwd=work, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        procs.append(init)
        out = Lines(init)
        out.wait("Application has successfully initialized.", 1)
        subprocess.run(tool_cmd("sender", "-h", f"127.0.0.1:{port}", "-m", str(2 * keys), "-y",
                                "-g", "12", "-u", "-w", "-i", "0"), cwd=work, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        grows, shrinks = [], []
        for n in range(1, rounds + 1):
            joiner = subprocess.Popen(
                [*tool_cmd("machida"), *common, "--join", f"127.0.0.1:{control}", "--name",
                 "worker-2"], cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            )  # fmt: skip
            procs.append(joiner)
            grows.append(out.wait(RESUMED, 2 * n - 1) - out.wait(STOPPING, 2 * n - 1))
            subprocess.run(tool_cmd("cluster_shrinker", "--external", f"127.0.0.1:{external}",
                                    "--workers", "worker-2"),
                           check=True, stdout=subprocess.DEVNULL)  # fmt: skip
            if joiner.wait(TIMEOUT_S) != 0:
                raise RuntimeError(f"the leaving worker exited {joiner.returncode}")
            shrinks.append(out.wait(RESUMED, 2 * n) - out.wait(STOPPING, 2 * n))
        subprocess.run(tool_cmd("cluster_shutdown", f"127.0.0.1:{external}"), check=True)
        init.wait(TIMEOUT_S)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {"keys": keys, "state_bytes": size, "rounds": rounds,
            "grow_ms": _stats(grows), "shrink_ms": _stats(shrinks)}  # fmt: skip


def _stats(seconds: list[float]) -> dict:
    ms = sorted(s * 1000 for s in seconds)
    return {"p50": round(statistics.median(ms), 1), "max": round(ms[-1], 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--out", default="bench/autoscale.json")
    args = parser.parse_args()
    results = []
    print("pause of processing while the cluster changes (resilience on, --stop-pause 0)")
    print(f"{'keys':>6} {'state B':>8}  grow p50 / max ms   shrink p50 / max ms")
    for keys, size in SHAPES:
        with tempfile.TemporaryDirectory(prefix="bench-autoscale-") as tmp:
            result = shape_run(keys, size, args.rounds, Path(tmp))
        results.append(result)
        g, s = result["grow_ms"], result["shrink_ms"]
        print(f"{keys:>6} {size:>8}  {g['p50']:>8} / {g['max']:<8} {s['p50']:>10} / {s['max']}")
    os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"written {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
