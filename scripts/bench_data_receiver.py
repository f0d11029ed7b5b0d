"""Benchmark: how many frames per second ``data_receiver --framed`` takes in.

Starts ``data_receiver -l 127.0.0.1:0 --framed --no-write --expect N`` (or,
with ``--write``, printing every line into a pipe this script drains), then
feeds it N sequence_window-shaped frames such as ``[94,96,98,100]`` over one
connection as fast as the socket allows. The rate is N divided by the time
from the first byte sent to the receiver's exit, which ``--expect`` makes
happen right after the N-th frame has been handled and flushed.

    .venv/bin/python scripts/bench_data_receiver.py [-n 2_000_000] [--write] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import struct
import subprocess
import sys
import threading
import time

BLOCK = 100_000


def frames_block() -> bytes:
    """BLOCK frames of windows as the sequence_window encoder writes them."""
    windows = [b"[%d,%d,%d,%d]" % (n - 6, n - 4, n - 2, n) for n in range(10**6, 10**6 + BLOCK)]
    return b"".join(struct.pack(">I", len(w)) + w for w in windows)


def _drain(pipe) -> None:
    """Read the receiver's stdout so that printing never blocks it."""
    while pipe.read(1 << 20):
        pass


def run_once(count: int, write: bool, block: bytes) -> float:
    cmd = [sys.executable, "-m", "wallaroo_tools.data_receiver", "-l", "127.0.0.1:0",
           "--framed", "--expect", str(count)] + ([] if write else ["--no-write"])  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE)
    port = int(proc.stdout.readline().decode().rsplit(":", 1)[1])
    drain = threading.Thread(target=_drain, args=(proc.stdout,))
    drain.start()
    with socket.create_connection(("127.0.0.1", port)) as sock:
        started = time.perf_counter()
        for _ in range(count // BLOCK):
            sock.sendall(block)
        code = proc.wait(300)
        elapsed = time.perf_counter() - started
    drain.join(60)
    if code != 0:
        sys.exit(f"data_receiver exited {code}")
    return count / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--frames", type=lambda s: int(s.replace("_", "")),
                        default=2_000_000)  # fmt: skip
    parser.add_argument("--write", action="store_true", help="print lines instead of --no-write")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    count = max(BLOCK, args.frames // BLOCK * BLOCK)
    block = frames_block()
    rates = [run_once(count, args.write, block) for _ in range(args.runs)]
    for run, rate in enumerate(rates, 1):
        print(f"run {run}: {rate:,.0f} frames/s")
    mode = "printing lines" if args.write else "--no-write"
    print(f"{count} frames, {mode}: best {max(rates):,.0f} frames/s")


if __name__ == "__main__":
    main()
