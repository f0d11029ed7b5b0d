"""The README scenario on Flink, behind ``make flink-run``: Sequence Window as a Flink job.

The same run as ``make run`` with ``machida-flink`` in place of the two
``machida`` commands: ``data_receiver --framed`` (into ``run-flink/received.txt``),
``machida-flink`` with the README's flags (an embedded MiniCluster, or the
session cluster given by ``--jobmanager``), 1000 values from ``sender``, then
``cluster_shutdown`` and the validator's verdict. Logs stay in ``run-flink/``.

Usage: python scripts/flink_demo.py [--messages N] [--parallelism P]
       [--jobmanager HOST:PORT] [--dir DIR] [--base-port P]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import time
from pathlib import Path

from wallaroo_tools.loopback import tool_cmd, wait_for_text

# A Flink job takes 5-15 s to start; the run itself a few seconds.
DEADLINE_S = 120.0


def windows_in(path: Path) -> list[str]:
    lines = path.read_text().splitlines() if path.exists() else []
    return [line for line in lines if line.startswith("[")]


def start(name: str, argv: list[str], run_dir: Path, stdout: Path | None = None):
    out = stdout or run_dir / f"{name}.out"
    with open(out, "wb") as o, open(run_dir / f"{name}.err", "wb") as e:
        return subprocess.Popen(argv, stdout=o, stderr=e, cwd=run_dir), out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--jobmanager")
    parser.add_argument("--dir", default="run-flink", help="where logs and received.txt go")
    parser.add_argument("--base-port", type=int, default=7000)
    opts = parser.parse_args()
    run_dir = Path(opts.dir).resolve()
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    shift = opts.base_port - 7000

    def addr(port: int) -> str:
        return f"127.0.0.1:{port + shift}"

    flink_args = [
        "--application-module", "sequence_window", "--in", addr(7010), "--out", addr(7002),
        "--metrics", addr(5001), "--external", addr(5050), "--resilience-dir", str(run_dir),
        "--parallelism", str(opts.parallelism), "--ponythreads=1",
    ]  # fmt: skip
    if opts.jobmanager:
        flink_args += ["--jobmanager", opts.jobmanager]
    received = run_dir / "received.txt"
    procs = []
    deadline = time.monotonic() + DEADLINE_S
    try:
        recv_argv = tool_cmd("data_receiver", "--listen", addr(7002), "--framed")
        receiver, _ = start("data_receiver", recv_argv, run_dir, stdout=received)
        procs.append(("data_receiver", receiver))
        wait_for_text(received, "Listening on", receiver, deadline, "data_receiver")
        flink_argv = [sys.executable, "-m", "machida_flink", *flink_args]
        flink, flink_out = start("machida-flink", flink_argv, run_dir)
        procs.append(("machida-flink", flink))
        wait_for_text(flink_out, "Application has successfully initialized.", flink, deadline,
                      "machida-flink")  # fmt: skip
        start_s = time.monotonic()
        sent = subprocess.run(
            tool_cmd("sender", "--host", addr(7010), "--batch-size", "10", "--interval",
                     "10_000_000", "--binary", "--msg-size", "12", "--no-write", "--u64",
                     "--messages", str(opts.messages)),
            capture_output=True, text=True, timeout=DEADLINE_S,
        )  # fmt: skip
        if sent.returncode != 0:
            raise RuntimeError(f"sender failed: {sent.stderr.strip()}")
        while len(windows_in(received)) < opts.messages:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {len(windows_in(received))} windows arrived in time")
            time.sleep(0.05)
        seconds = time.monotonic() - start_s
        subprocess.run(tool_cmd("cluster_shutdown", addr(5050)), check=True, timeout=10)
        code = flink.wait(timeout=60)
        receiver.terminate()
        receiver.wait(timeout=10)
        verdict = subprocess.run(
            tool_cmd("validator", "-i", str(received), "-e", str(opts.messages)),
            capture_output=True, text=True,
        )  # fmt: skip
    except (RuntimeError, subprocess.SubprocessError, OSError) as err:
        print(f"make flink-run failed: {err}", file=sys.stderr)
        for name, _ in procs:
            text = (run_dir / f"{name}.err").read_text(errors="replace")
            print(f"--- {name}:\n{text[-2000:]}", file=sys.stderr)
        return 1
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    where = opts.jobmanager or "an embedded MiniCluster"
    print(f"Sequence Window as a Flink job on {where}, parallelism {opts.parallelism}")
    print(f"  messages sent            {opts.messages}")
    print(f"  windows received         {len(windows_in(received))}")
    print(f"  rate                     {opts.messages / seconds:,.0f} windows/s, paced sender")
    print(f"  machida-flink exit       {code}")
    print(f"  received file            {received}")
    print(f"  validator -e {opts.messages}:        {(verdict.stdout + verdict.stderr).strip()}")
    return 0 if verdict.returncode == 0 and code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
