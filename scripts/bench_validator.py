"""Benchmark of the validator: how many windows per second it checks.

Writes the output of a correct 1,000,000-value run (values 1..N alternate
between the two parities, as a 2-worker cluster interleaves them) in the
``framed``, ``lines`` and ``giles`` layouts into a temporary directory, then times the
``validator`` command on each file (a real subprocess, best of a few runs,
start-up included), :func:`~wallaroo_tools.validator.validate_bytes` on the
same bytes in memory, and :func:`~wallaroo_tools.validation.validate` on the
already parsed windows. Run it with ``python scripts/bench_validator.py [N]``.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from wallaroo_tools.fixtures import RunRecorder
from wallaroo_tools.layouts import FRAMED, GILES, LINES, parse_window
from wallaroo_tools.validation import validate
from wallaroo_tools.validator import validate_bytes

REPEATS = 3


def best_of(action, repeats: int = REPEATS) -> float:
    """The shortest wall time of ``repeats`` calls, in seconds."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return min(times)


def run_cli(path: Path, n: int) -> None:
    cmd = [sys.executable, "-m", "wallaroo_tools.validator", "-e", str(n), "-i", str(path)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0 or done.stdout.strip() != "Validation successful!":
        raise SystemExit(f"validator failed on {path}: {done.stdout} {done.stderr}")


def check_ok(result) -> None:
    if not result.ok:
        raise SystemExit(f"validation failed: {result.message}")


def show(what: str, n: int, seconds: float) -> None:
    print(f"{what:<44} {seconds:7.3f} s  {n / seconds / 1e6:6.2f} M windows/s")


def main(argv: list[str]) -> int:
    n = int(argv[0].replace("_", "")) if argv else 1_000_000
    run = RunRecorder()
    run.write(range(1, n + 1))
    with tempfile.TemporaryDirectory() as tmp:
        for layout in (FRAMED, LINES, GILES):
            data = run.encode(layout)
            path = Path(tmp) / f"received.{layout}"
            path.write_bytes(data)
            print(f"{layout}: {n} windows, {len(data) / 1e6:.1f} MB")
            cli_time = best_of(lambda path=path: run_cli(path, n))
            show(f"  validator CLI (subprocess, {layout})", n, cli_time)
            memory_time = best_of(lambda data=data: check_ok(validate_bytes(data, expected=n)))
            show(f"  validate_bytes ({layout}, in memory)", n, memory_time)
    windows = [(ts, parse_window(payload)) for ts, payload in run.records]
    show("validate() on parsed windows", n, best_of(lambda: check_ok(validate(windows, n))))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
