"""Benchmark: push N values through sequence_window with the in-process driver.

Usage: python scripts/bench_driver.py [N] [WORKERS]   (defaults 1_000_000 and 2)

Prints the rate for decoded values (Driver.feed) and for raw frames
(Driver.feed_bytes, in 64 KiB chunks as a socket would deliver them).
"""

from __future__ import annotations

import struct
import sys
import time

from machida.testing import Driver


def frames(n: int) -> bytes:
    pack = struct.Struct(">IQ").pack
    return b"".join(pack(8, i) for i in range(1, n + 1))


def timed(label: str, n: int, fn) -> None:
    start = time.perf_counter()
    outputs = fn()
    seconds = time.perf_counter() - start
    print(
        f"{label:<28} {n:>10,} values  {seconds:6.2f} s  {n / seconds:12,.0f} values/s  "
        f"({len(outputs):,} outputs)"
    )


def main() -> None:
    n = int(sys.argv[1].replace("_", "")) if len(sys.argv) > 1 else 1_000_000
    workers = int(sys.argv[2]) if len(sys.argv) > 2 else 2
    timed(
        f"feed, {workers} worker(s)",
        n,
        lambda: Driver("sequence_window", workers=workers).feed(range(1, n + 1)),
    )
    data = frames(n)
    chunks = [data[i : i + 65536] for i in range(0, len(data), 65536)]
    timed(
        f"feed_bytes, {workers} worker(s)",
        n,
        lambda: Driver("sequence_window", workers=workers).feed_bytes(chunks),
    )


if __name__ == "__main__":
    main()
