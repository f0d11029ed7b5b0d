"""The README scenario behind ``make run``: Sequence Window on a real 2-worker cluster.

Starts ``data_receiver --framed`` (its output goes to ``run/received.txt``), the
initializer and ``worker-2`` with the seed README's flags, waits for
``Application has successfully initialized.``, sends 1000 values with
``sender``, waits for 1000 windows, stops the cluster with
``cluster_shutdown``, stops the receiver, and runs ``validator`` on what was
received. Prints a short report; exits 0 only if every step worked and the
validator passed. Logs of every process are kept in ``run/``.

Usage: python scripts/demo.py [--messages N] [--dir DIR] [--base-port P | --free-ports]
(--base-port P shifts every port of the README by P - 7000, e.g. 17000; --free-ports gives
each one a port nothing listens on, as the tests do.)
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wallaroo_tools.loopback import tool_cmd, unused_port, wait_for_text

DEADLINE_S = 60.0


class Proc:
    """A child process whose stdout and stderr go to log files under the run directory."""

    def __init__(self, name: str, argv: list[str], logs: Path, stdout: Path | None = None):
        self.name = name
        self.out_path = stdout or logs / f"{name}.out"
        self.err_path = logs / f"{name}.err"
        with open(self.out_path, "wb") as out, open(self.err_path, "wb") as err:
            self.proc = subprocess.Popen(argv, stdout=out, stderr=err, cwd=logs)

    def wait_for(self, text: str, deadline: float) -> None:
        wait_for_text(self.out_path, text, self.proc, deadline, self.name)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def windows_in(path: Path) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.startswith("[")]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--dir", default="run", help="where logs and received.txt go")
    ports = parser.add_mutually_exclusive_group()
    ports.add_argument("--base-port", type=int, default=7000)
    ports.add_argument("--free-ports", action="store_true", help="a free port for each")
    opts = parser.parse_args()
    run_dir = Path(opts.dir).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shift = opts.base_port - 7000
    free: dict[int, int] = {}

    def addr(port: int) -> str:
        if opts.free_ports:
            return f"127.0.0.1:{free.setdefault(port, unused_port())}"
        return f"127.0.0.1:{port + shift}"

    common = [
        "--application-module", "sequence_window", "--in", addr(7010), "--out", addr(7002),
        "--metrics", addr(5001), "--control", addr(6000), "--resilience-dir", str(run_dir),
        "--ponythreads=1",
    ]  # fmt: skip
    procs: list[Proc] = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        receiver = Proc(
            "data_receiver",
            tool_cmd("data_receiver", "--ponythreads=1", "--ponynoblock", "--listen",
                     addr(7002), "--framed"),
            run_dir, stdout=run_dir / "received.txt",
        )  # fmt: skip
        procs.append(receiver)
        receiver.wait_for("Listening on", deadline)
        initializer_flags = ["--data", addr(6001), "--external", addr(5050),
                             "--worker-count", "2", "--cluster-initializer"]  # fmt: skip
        init = Proc("initializer", tool_cmd("machida", *common, *initializer_flags), run_dir)
        worker_flags = ["--external", addr(5051), "--name", "worker-2"]
        worker = Proc("worker-2", tool_cmd("machida", *common, *worker_flags), run_dir)
        procs += [init, worker]
        init.wait_for("Application has successfully initialized.", deadline)

        start = time.monotonic()
        sent = subprocess.run(
            tool_cmd("sender", "--host", addr(7010), "--batch-size", "10", "--interval",
                     "10_000_000", "--ponythreads=1", "--binary", "--msg-size", "12",
                     "--no-write", "--u64", "--messages", str(opts.messages)),
            capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip
        if sent.returncode != 0:
            raise RuntimeError(f"sender failed: {sent.stderr.strip()}")
        received = run_dir / "received.txt"
        while len(windows_in(received)) < opts.messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(windows_in(received))} windows arrived in time")
            time.sleep(0.05)
        seconds = time.monotonic() - start

        subprocess.run(tool_cmd("cluster_shutdown", addr(5050)), check=True, timeout=10)
        codes = {p.name: p.proc.wait(timeout=30) for p in (init, worker)}
        receiver.proc.terminate()
        receiver.proc.wait(timeout=10)
        verdict = subprocess.run(
            tool_cmd("validator", "-i", str(received), "-e", str(opts.messages)),
            capture_output=True, text=True,
        )  # fmt: skip
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        print(f"make run failed: {err}", file=sys.stderr)
        for proc in procs:
            print(f"--- {proc.name} ({proc.err_path}):", file=sys.stderr)
            print(proc.err_path.read_text(errors="replace")[-2000:], file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            proc.stop()

    windows = windows_in(run_dir / "received.txt")
    even = sum(1 for w in windows if int(w.strip("[]").split(",")[-1]) % 2 == 0)
    print("Sequence Window on a 2-worker machida cluster")
    print(f"  messages sent            {opts.messages}")
    print(f"  windows from initializer {even} (key 0, even values)")
    print(f"  windows from worker-2    {len(windows) - even} (key 1, odd values)")
    print(f"  rate                     {len(windows) / seconds:,.0f} windows/s, paced sender")
    print(f"  shutdown exit statuses   {codes}")
    print(f"  received file            {run_dir / 'received.txt'}")
    print(f"  validator -e {opts.messages}:        {(verdict.stdout + verdict.stderr).strip()}")
    return 0 if verdict.returncode == 0 and set(codes.values()) == {0} else 1


if __name__ == "__main__":
    sys.exit(main())
