"""Benchmark: the floor this machine puts under any latency, measured without the runner.

Two measurements, each in this one process:

* stalls: a loop that sleeps 0.5 ms at a time for ``--seconds``; every sleep
  that overshoots by more than 0.7 ms is a stall of the whole process (the
  kernel ran something else, or held it), printed with the time since the
  previous one, so that a periodic cause shows as a steady interval;
* fsync: ``--appends`` appends of 300 bytes to a file in ``--dir``, each
  followed by ``os.fsync``, as the event log does once per batch; the time of
  each append-and-fsync at p50, p99, p99.9 and max.

    .venv/bin/python scripts/bench_machine.py [--seconds 10] [--appends 5000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

SLEEP_S = 0.0005
STALL_S = 0.0007


def stalls(seconds: float) -> list[tuple[float, float]]:
    """(when, overshoot) of each sleep that overshot by more than STALL_S."""
    found = []
    start = time.monotonic()
    end = start + seconds
    while (before := time.monotonic()) < end:
        time.sleep(SLEEP_S)
        over = time.monotonic() - before - SLEEP_S
        if over > STALL_S:
            found.append((before - start, over))
    return found


def fsync_times(directory: str, appends: int) -> list[float]:
    record = b"x" * 300
    times = []
    fd, path = tempfile.mkstemp(dir=directory, suffix=".bench")
    try:
        for _ in range(appends):
            before = time.perf_counter()
            os.write(fd, record)
            os.fsync(fd)
            times.append(time.perf_counter() - before)
    finally:
        os.close(fd)
        os.remove(path)
    return sorted(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--appends", type=int, default=5000)
    parser.add_argument("--dir", default=tempfile.gettempdir())
    args = parser.parse_args()

    found = stalls(args.seconds)
    print(
        f"stalls over {STALL_S * 1000:.1f} ms in {args.seconds:g} s of 0.5 ms sleeps: {len(found)}"
    )
    previous = None
    for when, over in found:
        since = "" if previous is None else f", {(when - previous) * 1000:.0f} ms after the last"
        print(f"  at {when:7.3f} s: {over * 1000:.2f} ms{since}")
        previous = when

    times = fsync_times(args.dir, args.appends)

    def at(q: float) -> float:
        return times[min(len(times) - 1, int(q * len(times)))] * 1e6

    print(f"300-byte append + fsync in {args.dir}, {len(times)} times: p50 {at(0.5):.0f} µs, "
          f"p99 {at(0.99):.0f} µs, p99.9 {at(0.999):.0f} µs, "
          f"max {times[-1] * 1e6:.0f} µs")  # fmt: skip


if __name__ == "__main__":
    main()
