"""Example inputs for the validator: a correct run and each defect it must catch.

The validator's own tests need files that a correct Sequence Window run would
write, and files with one injected defect each (tools.md §5.6). This module
builds them in memory as Wallaroo's example generator did: it keeps a 4-slot
window per parity starting at ``[0,0,0,0]``, pushes values into them, writes
one giles record per push with a ts that counts every push (written or not),
and lets a fixture tamper with a window between pushes. :func:`convert`
rewrites a file in the ``framed`` or ``lines`` layout. ``python -m
wallaroo_tools.fixtures DIR`` writes every fixture into DIR.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable

from machida.options import Option, OptionParser, UsageError, run_cli
from wallaroo_tools.layouts import GILES, LAYOUTS, encode_records, records
from wallaroo_tools.validation import format_window


class RunRecorder:
    """Plays the application's two windows and records what it would emit.

    ``rings[0]`` is the even window and ``rings[1]`` the odd one, oldest
    first; a fixture may edit them directly between pushes.
    """

    def __init__(self) -> None:
        self.rings = [[0, 0, 0, 0], [0, 0, 0, 0]]
        self.ts = 0
        self.records: list[tuple[int, bytes]] = []

    def push(self, value: int) -> list[int]:
        """Slide ``value`` into its parity's window, oldest out; returns the window."""
        ring = self.rings[value % 2]
        ring.pop(0)
        ring.append(value)
        return ring

    def write(self, values: Iterable[int]) -> None:
        """Push each value and record the window it produced."""
        for value in values:
            self.records.append((self.ts, format_window(self.push(value)).encode()))
            self.ts += 1

    def skip(self, values: Iterable[int]) -> None:
        """Push each value without recording it: a window lost on the way."""
        for value in values:
            self.push(value)
            self.ts += 1

    def encode(self, layout: str = GILES) -> bytes:
        return encode_records(layout, self.records)


def _pass(run: RunRecorder) -> None:
    run.write(range(1, 1001))


def _pass_with_atleastonce(run: RunRecorder) -> None:
    run.write(range(1, 501))
    # A replay after a recovery: both windows go back to where 400 was seen.
    run.rings[0][:] = [394, 396, 398, 400]
    run.rings[1][:] = [393, 395, 397, 399]
    run.write(range(401, 1001))


def _fail_expect_max(run: RunRecorder) -> None:
    run.write(range(1, 1003))


def _fail_increments(run: RunRecorder) -> None:
    run.write(range(1, 101))
    run.write(range(81, 1001))


def _fail_sequentiality(run: RunRecorder) -> None:
    run.write(range(1, 101))
    run.skip(range(101, 111))
    run.write(range(111, 1001))


def _fail_size(run: RunRecorder) -> None:
    run.write(range(1, 101))
    run.rings[0].insert(0, 92)
    run.write(range(101, 111))
    run.rings[0].pop(0)
    run.write(range(111, 1001))


def _fail_no_nonlead_zeroes(run: RunRecorder) -> None:
    run.write(range(1, 101))
    run.rings[0].pop(0)
    run.rings[0].append(0)
    run.write(range(101, 1001))


def _fail_parity(run: RunRecorder) -> None:
    run.write(range(1, 101))
    run.rings[0].pop(0)
    run.rings[0].append(101)
    run.write(range(102, 1001))


def _fail_expected_difference(run: RunRecorder) -> None:
    run.write(range(1, 999))
    run.write([1000])


FIXTURES: dict[str, Callable[[RunRecorder], None]] = {
    "pass.txt": _pass,
    "pass_with_atleastonce.txt": _pass_with_atleastonce,
    "fail_expect_max.txt": _fail_expect_max,
    "fail_increments.txt": _fail_increments,
    "fail_sequentiality.txt": _fail_sequentiality,
    "fail_size.txt": _fail_size,
    "fail_no_nonlead_zeroes.txt": _fail_no_nonlead_zeroes,
    "fail_parity.txt": _fail_parity,
    "fail_expected_difference.txt": _fail_expected_difference,
}


def fixture(name: str, layout: str = GILES) -> bytes:
    """The bytes of fixture ``name`` (a key of :data:`FIXTURES`) in ``layout``."""
    run = RunRecorder()
    FIXTURES[name](run)
    return run.encode(layout)


def convert(data: bytes, layout: str, source: str = GILES) -> bytes:
    """Rewrite a whole ``source`` file in ``layout``; ts values are kept only by ``giles``."""
    return encode_records(layout, records(data, source))


def write_all(directory: str, layout: str = GILES) -> list[str]:
    """Write every fixture into ``directory`` (created if needed); returns the paths."""
    os.makedirs(directory, exist_ok=True)
    paths = []
    for name in FIXTURES:
        path = os.path.join(directory, name)
        with open(path, "wb") as f:
            f.write(fixture(name, layout))
        paths.append(path)
    return paths


USAGE = "Usage: python -m wallaroo_tools.fixtures [--format giles|framed|lines] DIR"


def run(argv: list[str]) -> int:
    parser = OptionParser([Option("format", default=GILES), Option("help", "h", kind="flag")])
    parsed = parser.parse(argv)
    if parsed.values["help"]:
        print(USAGE)
        return 0
    layout = parsed.values["format"]
    if layout not in LAYOUTS:
        raise UsageError(f"option --format must be one of giles, framed, lines, got {layout!r}")
    if len(parsed.rest) != 1:
        raise UsageError("expected one directory")
    for path in write_all(parsed.rest[0], layout):
        print(path)
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
