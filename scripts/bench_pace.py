"""A paced sender for the latency benchmark: u64 records at a fixed rate, each send time kept.

Every millisecond it writes one batch of ``rate / 1000`` records (giles' framing:
``u32be 8 | u64be value``, values 1, 2, 3, ...) with one ``send``, and notes
the batch's time (CLOCK_MONOTONIC, which every process on the machine
shares). Between batches it sleeps until the next millisecond; it never spins.
A wake-up that comes late sends the batches it missed at once, each stamped
with the time it really left, so the rate holds and no latency is hidden.
At the end it writes the stamps, one u64 per batch, to ``--out``, says so, and
then waits, idle, until the cluster closes the connection, so that its own exit
does not compete with the last windows for the CPU.

Usage: python scripts/bench_pace.py --host H:P --rate MSGS_PER_S --seconds S --out FILE
"""

from __future__ import annotations

import argparse
import socket
import struct
import time
from array import array

TICK_NS = 1_000_000
FRAME = struct.Struct(">IQ")


def batch(first: int, count: int) -> bytes:
    return b"".join(FRAME.pack(8, v) for v in range(first, first + count))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", required=True)
    parser.add_argument("--rate", type=int, required=True)
    parser.add_argument("--seconds", type=float, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    host, port = args.host.rsplit(":", 1)
    per_tick = max(1, args.rate // 1000)
    ticks = int(args.seconds * 1000)
    stamps = array("q")
    with socket.create_connection((host, int(port))) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        start = time.monotonic_ns()
        for tick in range(ticks):
            due = start + tick * TICK_NS
            now = time.monotonic_ns()
            if due > now:
                time.sleep((due - now) / 1e9)
            data = batch(tick * per_tick + 1, per_tick)
            stamps.append(time.monotonic_ns())
            sock.sendall(data)
        with open(args.out, "wb") as out:
            stamps.tofile(out)
        print(f"sent {ticks * per_tick} records in {ticks} batches of {per_tick}", flush=True)
        while sock.recv(4096):  # until the cluster shuts down and closes the source
            pass
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
