"""The README scenario behind ``make run``.

Builds the exact bytes the seed's sender command would send (``--binary
--msg-size 12 --u64``, batches of 10), carries them through sequence_window on
two simulated workers with the in-process driver, writes the windows as
``data_receiver --framed`` prints them, and runs the real ``validator`` tool
on that file. Prints a short report and exits 0 only if the validator passes.

Usage: python scripts/demo.py [--messages N] [--dir DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from machida.testing import Driver
from wallaroo_tools.sender import make_records, parse_config


def sender_batches(messages: int, batch_size: int) -> list[bytes]:
    """The socket writes the seed's sender command makes, one per tick."""
    config = parse_config(
        ["--host", "127.0.0.1:7010", "--batch-size", str(batch_size), "--binary",
         "--msg-size", "12", "--no-write", "--u64", "--messages", str(messages)]
    )  # fmt: skip
    records = make_records(config, warn=print)
    batches, left = [], messages
    while left:
        batch = records.take(min(batch_size, left))
        batches.append(batch.wire)
        left -= batch.count
    return batches


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--dir", default="run", help="where received.txt is written")
    opts = parser.parse_args()
    out_dir = Path(opts.dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    received = out_dir / "received.txt"

    batches = sender_batches(opts.messages, batch_size=10)
    driver = Driver("sequence_window", workers=2, errors="log")
    start = time.perf_counter()
    driver.feed_bytes(batches)
    driver.close()
    seconds = time.perf_counter() - start
    lines = [out.data[4:] + b"\n" for out in driver.outputs if out.data is not None]
    received.write_bytes(b"".join(lines))

    per_worker = Counter(out.worker for out in driver.outputs)
    verdict = subprocess.run(
        [sys.executable, "-m", "wallaroo_tools.validator", "-e", str(opts.messages),
         "-i", str(received)],
        capture_output=True, text=True,
    )  # fmt: skip
    print("Sequence Window, in-process driver with 2 simulated workers")
    print(f"  messages sent      {opts.messages}")
    for worker, count in sorted(per_worker.items()):
        print(f"  windows from {worker:<12} {count}")
    print(f"  rate               {opts.messages / seconds:,.0f} msgs/s")
    print(f"  dropped            {sum(driver.counters.values())}")
    print(f"  received file      {received}")
    print(f"  validator -e {opts.messages}: {(verdict.stdout + verdict.stderr).strip()}")
    return verdict.returncode


if __name__ == "__main__":
    sys.exit(main())
