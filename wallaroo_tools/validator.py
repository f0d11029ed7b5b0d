"""``validator``: check that a file holds the output of a correct Sequence Window run.

The command line of tools.md §5 over two pure parts: :mod:`.layouts` turns
the file's bytes into payloads and :mod:`.validation` judges windows. Between
them sits :class:`StreamValidator`, which is fed the file a chunk at a time.
Almost every payload of a real run is exactly the window its parity expects
next, so the stream validator first compares raw payloads with the bytes of
those windows, generated ahead in bulk, and parses only the payloads that
differ; those take the full rules, which alone decide every message. The
outcome is a :class:`~.validation.Result`: ``Validation successful!`` on
stdout and exit 0, or the message on stderr, ``Error validating file.`` on
stdout and exit 1.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator, Sequence

from machida.options import Option, OptionParser, UsageError, parse_int, run_cli
from wallaroo_tools.layouts import (
    LAYOUTS,
    DecodeError,
    RecordDecoder,
    WindowParseError,
    decoder_for,
    detect_layout,
    parse_window,
)
from wallaroo_tools.validation import (
    EVEN,
    ODD,
    SUCCESS,
    TESTABLE_MAX,
    Result,
    ValidationError,
    Validator,
)

FAILURE = "Error validating file."
AUTO = "auto"
# Enough of the file's start to tell the layouts apart ("Listening on").
DETECT_BYTES = 12
# Reads of this size keep memory flat on long files and amortise the per-read cost.
CHUNK_SIZE = 1 << 20
# Expected windows are generated in blocks: small after a surprise (an -a
# replay may follow), doubling while the stream keeps matching.
FIRST_BLOCK = 16
MAX_BLOCK = 8192
# Stands for "no window can be expected" (past the testable range): equal to no payload.
_NEVER = object()

USAGE = "Usage: validator [-i FILE] [-e N] [-a] [--format auto|giles|framed|lines]"
OPTIONS = [
    Option("input", "i", default="received.txt", metavar="FILE", help="file to validate"),
    Option("expected", "e", kind="int", default=1000, minimum=0, metavar="N"),
    Option("at-least-once", "a", kind="flag"),
    Option("format", default=AUTO, metavar="LAYOUT"),
    Option("help", "h", kind="flag"),
]
HELP = """\
PARAMETERS:
-----------------------------------------------------------------------------------
--input/-i FILE [File to validate (default: received.txt)]
--expected/-e N [Highest value the run must end with (default: 1000)]
--expect N [Same as --expected; a missing or bad value is ignored]
--at-least-once/-a [At-least-once mode: replays pass (default: exactly-once)]
--format auto|giles|framed|lines [Layout of the file (default: auto)]
--help/-h [Print this table]
-----------------------------------------------------------------------------------"""


def expected_payloads(parity: int, first_count: int, n: int) -> list[bytes]:
    """The payloads ``[a,b,c,d]`` of ``parity``'s windows after pushes first_count.. on.

    Windows past the testable range are left out: they fail, so they must
    take the full rules.
    """
    newest = 2 * (first_count + n - 1) - parity
    if newest > TESTABLE_MAX:
        n -= (newest - TESTABLE_MAX + 1) // 2
        newest = 2 * (first_count + n - 1) - parity
    if n <= 0:
        return []
    oldest = 2 * (first_count - 3) - parity
    zeroes = 0 if oldest > 0 else (min(0, newest) - oldest) // 2 + 1
    texts = [b"0"] * zeroes + list(map(b"%d".__mod__, range(oldest + 2 * zeroes, newest + 1, 2)))
    windows = map(b",".join, zip(texts, texts[1:], texts[2:], texts[3:]))
    return (b"[" + b"]\n[".join(windows) + b"]").split(b"\n")


class ExpectedPayloads:
    """The payloads one parity's next windows must have, generated a block at a time."""

    __slots__ = ("base", "block", "parity", "table")

    def __init__(self, parity: int) -> None:
        self.parity = parity
        self.base = 0
        self.block = FIRST_BLOCK
        # table[k] is the window after push base+k+1. A None ends the table
        # (generate the next block); a lone _NEVER means there is none to generate.
        self.table: list[object] = [None]

    def at(self, count: int) -> tuple[list[object], int]:
        """The table holding the window after push ``count + 1``, and its index there."""
        index = count - self.base
        if 0 <= index < len(self.table) - 1:
            return self.table, index
        # Running off the end means the stream kept matching; a jump means a reset.
        self.block = min(2 * self.block, MAX_BLOCK) if index == len(self.table) - 1 else FIRST_BLOCK
        self.base = count
        payloads = expected_payloads(self.parity, count + 1, self.block)
        self.table = [*payloads, None] if payloads else [_NEVER]
        return self.table, 0


class StreamValidator:
    """Validates a file fed in chunks; raises the first problem as it meets it.

    ``feed`` and ``close`` raise :class:`ValidationError`, :class:`DecodeError`
    or :class:`WindowParseError`; ``close`` runs the final checks as well.
    """

    def __init__(self, layout: str = AUTO, expected: int = 1000, at_least_once: bool = False):
        self.validator = Validator(expected, at_least_once)
        self.layout = layout
        self._decoder: RecordDecoder | None = None if layout == AUTO else decoder_for(layout)
        self._head = b""
        self._expected = (ExpectedPayloads(EVEN), ExpectedPayloads(ODD))

    def feed(self, data: bytes) -> None:
        if self._decoder is None:
            self._head += data
            if len(self._head) < DETECT_BYTES:
                return
            self._start()
            data, self._head = self._head, b""
        stamps, payloads = self._decoder.feed(data)
        self._check_batch(stamps, payloads)

    def close(self) -> None:
        if self._decoder is None:
            self._start()
            self._check_batch(*self._decoder.feed(self._head))
        self._check_batch(*self._decoder.close())
        self.validator.finish()

    def _start(self) -> None:
        self.layout = detect_layout(self._head)
        self._decoder = decoder_for(self.layout)

    def _check_batch(self, stamps: Sequence[int], payloads: list[bytes]) -> None:
        validator = self.validator
        first = validator.values
        rest = iter(payloads)
        while True:
            payload = self._skip_expected(rest)
            if payload is None:
                return
            if not self._take_expected(payload):
                ts = stamps[validator.values - first]
                validator.check(ts, parse_window(payload, ts))

    def _skip_expected(self, payloads: Iterator[bytes]) -> bytes | None:
        """Consume payloads while each is the window its parity expects next.

        Returns the first payload that is not (None once ``payloads`` is
        exhausted). A table running out also stops the run early, so the
        payload returned may still be expected: see :meth:`_take_expected`.
        """
        counts = self.validator.counts
        t0, j0 = self._expected[EVEN].at(counts[EVEN])
        t1, j1 = self._expected[ODD].at(counts[ODD])
        e0, e1 = t0[j0], t1[j1]
        first0, first1 = j0, j1
        different = None
        for payload in payloads:
            if payload == e0:
                j0 += 1
                e0 = t0[j0]
            elif payload == e1:
                j1 += 1
                e1 = t1[j1]
            else:
                different = payload
                break
        self.validator.accept_expected(EVEN, j0 - first0)
        self.validator.accept_expected(ODD, j1 - first1)
        return different

    def _take_expected(self, payload: bytes) -> bool:
        """Account for ``payload`` if it is the window a parity expects next."""
        for parity in (EVEN, ODD):
            table, index = self._expected[parity].at(self.validator.counts[parity])
            if payload == table[index]:
                self.validator.accept_expected(parity, 1)
                return True
        return False


def validate_chunks(
    chunks: Iterable[bytes], layout: str = AUTO, expected: int = 1000, at_least_once: bool = False
) -> Result:
    """Validate an input given as byte chunks, in order; returns a :class:`Result`."""
    stream = StreamValidator(layout, expected, at_least_once)
    try:
        for chunk in chunks:
            stream.feed(chunk)
        stream.close()
    except (ValidationError, DecodeError, WindowParseError) as err:
        return Result(False, str(err), stream.validator.values)
    return Result(True, SUCCESS, stream.validator.values)


def validate_bytes(
    data: bytes, layout: str = AUTO, expected: int = 1000, at_least_once: bool = False
) -> Result:
    """Validate a whole input held in memory; returns a :class:`Result`."""
    # Fed a chunk at a time like a file: the batches stay small and cache-friendly.
    chunks = (data[i : i + CHUNK_SIZE] for i in range(0, len(data), CHUNK_SIZE))
    return validate_chunks(chunks, layout, expected, at_least_once)


def read_chunks(path: str, size: int = CHUNK_SIZE) -> Iterator[bytes]:
    """The file's bytes, ``size`` at a time."""
    with open(path, "rb") as f:
        yield from iter(lambda: f.read(size), b"")


def lenient_expect(words: list[str]) -> tuple[list[str], list[str]]:
    """Turn each ``--expect N`` into ``--expected=N``, dropping it if N is missing or bad.

    The 2017 README spelled the option ``--expect``, which the Pony tool
    silently ignored; here it works, and never stops the run. Returns the new
    words and one warning for each ``--expect`` dropped.
    """
    kept: list[str] = []
    warnings: list[str] = []
    i = 0
    while i < len(words):
        word = words[i]
        i += 1
        if word.startswith("--expect="):
            raw: str | None = word.partition("=")[2]
        elif word == "--expect":
            # As for every option, a separate value never starts with "-".
            has_value = i < len(words) and not words[i].startswith("-")
            raw = words[i] if has_value else None
            i += has_value
        else:
            kept.append(word)
            continue
        if raw is not None and _is_count(raw):
            kept.append("--expected=" + raw)
        else:
            shown = "no value" if raw is None else f"value {raw!r}"
            warnings.append(f"Warning: ignoring --expect with {shown}")
    return kept, warnings


def _is_count(text: str) -> bool:
    try:
        return parse_int(text) >= 0
    except ValueError:
        return False


def parse_args(argv: list[str]) -> dict:
    words, warnings = lenient_expect(argv)
    parsed = OptionParser(OPTIONS).parse(words)
    if parsed.rest:
        raise UsageError(f"unexpected argument {parsed.rest[0]!r}")
    options = parsed.values
    if options["format"] not in (AUTO, *LAYOUTS):
        raise UsageError(
            f"option --format must be one of auto, giles, framed, lines, got {options['format']!r}"
        )
    for warning in warnings:
        print(warning, file=sys.stderr)
    return options


def run(argv: list[str]) -> int:
    options = parse_args(argv)
    if options["help"]:
        print(HELP)
        return 0
    path = options["input"]
    if not os.path.exists(path):
        return report(Result(False, f"Input file '{path}' does not exist.", 0))
    try:
        chunks = read_chunks(path)
        result = validate_chunks(
            chunks, options["format"], options["expected"], bool(options["at_least_once"])
        )
    except OSError as err:
        return report(Result(False, f"Could not read input file '{path}': {err.strerror}", 0))
    if not result.ok and result.windows == 0 and result.message.startswith("Expected max"):
        # no window at all: say that, not which final check it fails (2017 named the
        # Expected max check; the README lists this among the tools' deviations)
        result = Result(False, f"Input file '{path}' holds no windows to validate.", 0)
    return report(result)


def report(result: Result) -> int:
    if result.ok:
        print(result.message)
        return 0
    print(result.message, file=sys.stderr)
    sys.stderr.flush()
    print(FAILURE)
    return 1


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
