"""``make bench-flink-rescale``: what a rescale of a running machida-flink job costs.

sequence_window runs on ``machida-flink`` (embedded MiniCluster, or the session
cluster ``--jobmanager`` names; parallelism 2)
fed by ``sender`` at a steady pace; the job is rescaled ``--rescales`` times
with ``external_sender -t rescale``, between parallelism 3 and 2, each once the
previous one has settled. A receiver in this process timestamps every read of
the job's output. A rescale's *pause* is the longest time without output from
the request until the next one: the stop-with-savepoint, the new job's start
and the catching up with what the ingress recorded meanwhile. Also printed per
rescale: the savepoint and resubmission times machida-flink reports, and the
time to the new job's ``Flink job: RUNNING``. At the end the run is shut down
(``cluster_shutdown``, which also ends the sender) and its output checked with
``validator -a`` up to the newest value that came out. Writes ``bench/flink_rescale.json``.

Usage: python scripts/bench_flink_rescale.py [--rescales 10] [--rate 2000]
       [--settle 3] [--out bench/flink_rescale.json] [--jobmanager HOST:PORT]
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from wallaroo_tools.loopback import tool_cmd, unused_port

HERE = Path(__file__).resolve().parent
START_S = 180.0
STEP_S = 120.0
TIMINGS = re.compile(r"stopped with a savepoint in ([\d.]+) s, the new job submitted ([\d.]+) s")


class Output:
    """The job's sink connections: every read's arrival time and the windows it completed."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.address = f"127.0.0.1:{self.server.getsockname()[1]}"
        self.arrivals: list[tuple[float, int]] = []
        self.windows: list[bytes] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            conn, _ = self.server.accept()
            threading.Thread(target=self._read, args=(conn,), daemon=True).start()

    def _read(self, conn: socket.socket) -> None:
        pending = b""
        with conn:
            while data := conn.recv(1 << 16):
                now = time.monotonic()
                pending += data
                got = []
                while len(pending) >= 4:
                    (n,) = struct.unpack_from(">I", pending)
                    if len(pending) < 4 + n:
                        break
                    got.append(pending[4 : 4 + n])
                    pending = pending[4 + n :]
                with self.lock:
                    self.windows += got
                    if got:
                        self.arrivals.append((now, len(got)))

    def count(self) -> int:
        with self.lock:
            return len(self.windows)

    def gap(self, start: float, end: float) -> float:
        """The longest time without output between ``start`` and ``end``."""
        with self.lock:
            times = [t for t, _ in self.arrivals if start <= t <= end]
        edges = [start, *times, end]
        return max(b - a for a, b in zip(edges, edges[1:]))


class Console:
    """machida-flink's stdout, each line with its arrival time."""

    def __init__(self, proc: subprocess.Popen, copy: Path) -> None:
        self.lines: list[tuple[float, str]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._read, args=(proc.stdout, copy), daemon=True).start()

    def _read(self, pipe, copy: Path) -> None:
        with open(copy, "w") as out:
            for raw in iter(pipe.readline, b""):
                line = raw.decode(errors="replace").rstrip()
                out.write(f"{time.monotonic():.3f} {line}\n")
                out.flush()
                with self.lock:
                    self.lines.append((time.monotonic(), line))

    def wait(self, text: str, after: int, timeout: float) -> tuple[int, float, str]:
        """The first line from index ``after`` on that contains ``text``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self.lock:
                for i in range(after, len(self.lines)):
                    if text in self.lines[i][1]:
                        return i, self.lines[i][0], self.lines[i][1]
            time.sleep(0.01)
        raise RuntimeError(f"machida-flink did not print {text!r} within {timeout:.0f} s")


def run(rescales: int, rate: int, settle: float, workdir: Path, where: list[str]) -> dict:
    with open(workdir / "flink.err", "wb") as flink_err, open(workdir / "sender.err", "wb") as err:
        return _run(rescales, rate, settle, workdir, where, flink_err, err)


def _run(rescales: int, rate: int, settle: float, workdir: Path, where: list[str], flink_err,
         sender_err) -> dict:  # fmt: skip
    output = Output()
    in_port, external = unused_port(), f"127.0.0.1:{unused_port()}"
    flink = subprocess.Popen(
        [sys.executable, "-m", "machida_flink", "--application-module", "sequence_window",
         "--in", f"127.0.0.1:{in_port}", "--out", output.address, "--external", external,
         "--resilience-dir", str(workdir), "--parallelism", "2", *where],
        cwd=HERE.parent, stdout=subprocess.PIPE, stderr=flink_err,
    )  # fmt: skip
    console = Console(flink, workdir / "flink.out")
    sender = None
    try:
        at, _, _ = console.wait("Application has successfully initialized.", 0, START_S)
        per_batch = max(1, rate // 20)  # a batch every 50 ms
        total = per_batch * 20 * int(rescales * (settle + 12) + 30)
        sender = subprocess.Popen(
            tool_cmd("sender", "-h", f"127.0.0.1:{in_port}", "-m", str(total), "-y", "-g", "12",
                     "-u", "-w", "-s", str(per_batch), "-i", "50_000_000"),
            stdout=subprocess.DEVNULL, stderr=sender_err,
        )  # fmt: skip
        time.sleep(settle)
        steps = []
        for i in range(rescales):
            target = 3 if i % 2 == 0 else 2
            if sender.poll() is not None:
                raise RuntimeError("the sender finished before the rescales did")
            asked = time.monotonic()
            subprocess.run(tool_cmd("external_sender", "-e", external, "-t", "rescale", "-m",
                                    str(target)), check=True, capture_output=True)  # fmt: skip
            asked_at, _, _ = console.wait(f"Flink job: rescaling to {target}", at, STEP_S)
            ran_at, running, _ = console.wait("Flink job: RUNNING", asked_at + 1, STEP_S)
            told_at, _, line = console.wait("stopped with a savepoint in", asked_at + 1, STEP_S)
            at = max(ran_at, told_at) + 1
            count = output.count()
            deadline = time.monotonic() + STEP_S
            while output.count() == count:  # output flows again
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no output after rescale {i + 1}")
                time.sleep(0.01)
            time.sleep(settle)
            timings = TIMINGS.search(line)
            steps.append({
                "to": target,
                "pause_s": round(output.gap(asked, time.monotonic()), 3),
                "running_after_s": round(running - asked, 3),
                "savepoint_s": float(timings.group(1)) if timings else None,
                "submit_s": float(timings.group(2)) if timings else None,
            })  # fmt: skip
            print(f"rescale {i + 1:2d} to {target}: pause {steps[-1]['pause_s']:.2f} s, "
                  f"RUNNING after {steps[-1]['running_after_s']:.2f} s ({line.split(': ', 1)[1]})",
                  flush=True)  # fmt: skip
        # drain and finish: the sender's connection is closed with the sources
        subprocess.run(tool_cmd("cluster_shutdown", external), check=True, capture_output=True)
        code = flink.wait(STEP_S)
        sender.wait(STEP_S)
    finally:
        for proc in (sender, flink):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.wait()
    received = workdir / "received.txt"
    received.write_bytes(b"".join(w + b"\n" for w in output.windows))
    # every value up to the newest one out must have come out, each key's windows in series
    sent = max(int(w.rsplit(b",", 1)[1].rstrip(b"]")) for w in output.windows)
    check = subprocess.run(tool_cmd("validator", "-a", "-i", str(received), "-e", str(sent)),
                           capture_output=True, text=True)  # fmt: skip
    pauses = sorted(step["pause_s"] for step in steps)
    return {
        "rescales": steps,
        "pause_p50_s": statistics.median(pauses),
        "pause_max_s": pauses[-1],
        "rate_per_s": per_batch * 20,
        "values": sent,
        "exit_status": code,
        "validator": (check.stdout + check.stderr).strip(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rescales", type=int, default=10)
    parser.add_argument("--rate", type=int, default=2000, help="values a second")
    parser.add_argument("--settle", type=float, default=3.0, help="seconds between rescales")
    parser.add_argument("--out", default="bench/flink_rescale.json")
    parser.add_argument(
        "--jobmanager",
        help="a session cluster's REST address (3 free task slots) instead of a "
        "MiniCluster; --resilience-dir is then a temporary directory of this host",
    )
    opts = parser.parse_args()
    workdir = Path(tempfile.mkdtemp(prefix="bench-flink-rescale-"))
    try:
        where = ["--jobmanager", opts.jobmanager] if opts.jobmanager else []
        result = run(opts.rescales, opts.rate, opts.settle, workdir, where)
    except RuntimeError as err:
        print(
            f"bench-flink-rescale failed: {err}\nmachida-flink's stderr (kept in {workdir}):\n"
            f"{(workdir / 'flink.err').read_text(errors='replace')[-3000:]}",
            file=sys.stderr,
        )
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    print(
        f"pause over {opts.rescales} rescales: p50 {result['pause_p50_s']:.2f} s, "
        f"max {result['pause_max_s']:.2f} s ({result['rate_per_s']} values/s, "
        f"{result['values']} values; exit {result['exit_status']}; {result['validator']})"
    )
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    ok = result["exit_status"] == 0 and "Validation successful" in result["validator"]
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
