"""Benchmark: how fast ``sender --interval 0`` pushes u64 records into a source.

Runs ``sender --interval 0 -y -g 12 -u -w -m N`` as a subprocess against a
listener in this process that reads and discards (with 1 MiB reads, so the
listener is not the bottleneck), checks that exactly 12·N bytes arrived, and
prints messages per second measured from the first byte to the sender's FIN.
The sender's own summary line (from ``Connected`` to its close) is shown too.

    .venv/bin/python scripts/bench_sender.py [-m 2_000_000] [--runs 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import threading
import time


def discard(server: socket.socket, result: dict) -> None:
    conn, _ = server.accept()
    with conn:
        total = 0
        first = None
        while chunk := conn.recv(1 << 20):
            if first is None:
                first = time.perf_counter()
            total += len(chunk)
        result.update(bytes=total, first=first, last=time.perf_counter())


def run_once(messages: int) -> tuple[float, str]:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        port = server.getsockname()[1]
        result: dict = {}
        reader = threading.Thread(target=discard, args=(server, result))
        reader.start()
        cmd = [sys.executable, "-m", "wallaroo_tools.sender", "-h", f"127.0.0.1:{port}",
               "--interval", "0", "-y", "-g", "12", "-u", "-w", "-m", str(messages)]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        reader.join(300)
    if proc.returncode != 0 or result.get("bytes") != 12 * messages:
        sys.exit(f"sender failed: exit {proc.returncode}, {result}\n{proc.stderr}")
    return messages / (result["last"] - result["first"]), proc.stderr.strip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-m", "--messages", type=lambda s: int(s.replace("_", "")),
                        default=2_000_000)  # fmt: skip
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rates = []
    for run in range(args.runs):
        rate, summary = run_once(args.messages)
        rates.append(rate)
        print(f"run {run + 1}: {rate:,.0f} msg/s on the wire   [{summary}]")
    print(f"best {max(rates):,.0f} msg/s, median {sorted(rates)[len(rates) // 2]:,.0f} msg/s")


if __name__ == "__main__":
    main()
