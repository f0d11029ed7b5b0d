"""The application's own share of the per-message cost: sequence_window's callbacks, timed alone.

Calls each callback a million times in a plain loop (best of three runs) and
prints what one call costs and what a message costs in the application's own
code, on the process that owns the source and on the others. No runner and no
reference can go below these figures; what ``make bench`` measures per
process beyond them is framing, routing, counting, the boundaries and the
sockets.

Usage: python scripts/bench_usercode.py [--n N]
"""

from __future__ import annotations

import argparse
import struct
import sys
import time
from typing import Any, Callable

sys.path[0:0] = [""]
from machida.app.loader import prepare_sys_path  # noqa: E402

prepare_sys_path()
import sequence_window as app  # noqa: E402


def per_call_us(call: Callable[[Any], Any], args: list, runs: int = 3) -> float:
    """The best of ``runs`` loops calling ``call`` on each of ``args``, per call, in µs; the
    loop's own cost is left in (a few hundredths of a µs)."""
    best = float("inf")
    for _ in range(runs):
        start = time.perf_counter()
        for arg in args:
            call(arg)
        best = min(best, time.perf_counter() - start)
    return best * 1e6 / len(args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    n = parser.parse_args().n
    values = list(range(1, n + 1))
    decoder, state = app.Decoder(), app.SequenceWindowStateBuilder().build()
    compute, encode = app.ObserveNewValue().compute, app.Encoder().encode
    window = [n + 1, n + 3, n + 5, n + 7]  # numbers as long as the run's own
    costs = {
        "payload_length": per_call_us(decoder.payload_length, [struct.pack(">I", 8)] * n),
        "decode": per_call_us(decoder.decode, [struct.pack(">Q", v) for v in values]),
        "compute_multi": per_call_us(app.MaybeOneToMany().compute_multi, values),
        "partition": per_call_us(app.SequencePartitionFunction().partition, values),
        "compute": per_call_us(lambda v: compute(v, state), values)
        - per_call_us(lambda v: None, values),
        "encode": per_call_us(encode, [window] * n),
    }
    for name, us in costs.items():
        print(f"{name:<15} {us:6.3f} µs a call")
    source_side = sum(costs[k] for k in ("payload_length", "decode", "compute_multi", "partition"))
    keyed = costs["compute"] + costs["encode"]
    print(f"a message costs {source_side + keyed:.2f} µs in the application's own code: "
          f"{source_side:.2f} where the source is, {keyed:.2f} where its key is")  # fmt: skip
    print(f"with 2 workers (half the keys on the initializer): initializer "
          f"{source_side + keyed / 2:.2f} s per million messages, worker-2 {keyed / 2:.2f}; "
          f"with 3 and --state-off-initializer: {source_side:.2f}, "
          f"{keyed / 2:.2f}, {keyed / 2:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
