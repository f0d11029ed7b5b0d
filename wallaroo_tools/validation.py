"""Sequence Window's correctness rules, as a pure object fed windows.

This is the judge behind the ``validator`` tool (tools.md §5.3 to §5.5), with no
file or byte handling: the layouts module turns files into windows, and this
module says whether the windows are the output of a correct run. Feed a
:class:`Validator` one ``(ts, window)`` at a time with :meth:`Validator.check`
and call :meth:`Validator.finish` at the end; the first broken rule raises
:class:`ValidationError` whose text is the tool's exact message. Or call
:func:`validate` on a whole iterable and get a :class:`Result`. The two
expected rings of the original are not stored: a ring only ever holds the
last four values its parity's counter produced (the ``-a`` reset included),
so the counters alone determine both rings, and :func:`expected_ring` rebuilds
one on demand for a message.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

EVEN = 0
ODD = 1
# Windows whose newest value is above this are outside what the original
# could test (it converted values to a signed 64-bit integer for the reset).
TESTABLE_MAX = 2**63 - 1
# Differences inside a window wrap like the original's unsigned arithmetic.
U64_MODULUS = 2**64
SUCCESS = "Validation successful!"


class ValidationError(Exception):
    """A rule failed; ``str(err)`` is the tool's exact message for it."""


@dataclass(frozen=True)
class Result:
    """The outcome of a whole validation: ``message`` is what the tool prints."""

    ok: bool
    message: str
    windows: int


def newest_expected(parity: int, count: int) -> int:
    """The newest value of ``parity``'s ring after ``count`` pushes."""
    return max(0, 2 * count - parity)


def expected_ring(parity: int, count: int) -> list[int]:
    """``parity``'s expected ring after ``count`` pushes, oldest first.

    The ring starts as ``[0,0,0,0]`` and push number k adds ``2k`` (even) or
    ``2k - 1`` (odd), so the ring is those values for k = count-3..count,
    with the ones before the first push read as 0.
    """
    newest = 2 * count - parity
    return [max(0, newest - 6), max(0, newest - 4), max(0, newest - 2), max(0, newest)]


def format_window(values: Iterable[int]) -> str:
    """``[a,b,c,d]``: how windows and rings appear in messages (no spaces)."""
    return "[" + ",".join(map(str, values)) + "]"


# -- Checks 1-4 and 6 of tools.md §5.3; each assumes the ones before it passed.


def size_ok(w: Sequence[int]) -> bool:
    return len(w) == 4


def no_non_leading_zeroes_ok(w: Sequence[int]) -> bool:
    seen_non_zero = False
    for value in w:
        if value:
            seen_non_zero = True
        elif seen_non_zero:
            return False
    return seen_non_zero


def parity_ok(w: Sequence[int]) -> bool:
    return all(w[i] == 0 or w[i] % 2 == w[i + 1] % 2 for i in range(3))


def testable_range_ok(w: Sequence[int]) -> bool:
    return w[3] <= TESTABLE_MAX


def increments_ok(w: Sequence[int]) -> bool:
    prev = w[0]
    for cur in w[1:]:
        step = (cur - prev) % U64_MODULUS
        if step in (0, 1):
            # Only the leading zeroes may repeat or step by one ([0,0,0,1]).
            if prev != 0:
                return False
        elif step != 2:
            return False
        prev = cur
    return True


WINDOW_RULES = (
    ("Size", size_ok),
    ("No non-leading zeroes", no_non_leading_zeroes_ok),
    ("Parity", parity_ok),
    ("Testable range", testable_range_ok),
    ("Increments", increments_ok),
)


class Validator:
    """Checks windows one at a time against the two expected rings.

    ``counts`` holds the number of pushes into the even and the odd ring
    (``count0`` and ``count1`` of the spec); ``values`` is the number of
    windows checked so far (``c``). Both are public so that a caller that
    recognised a run of expected windows by other means can account for
    them with :meth:`accept_expected`.
    """

    __slots__ = ("at_least_once", "counts", "expected", "values")

    def __init__(self, expected: int = 1000, at_least_once: bool = False) -> None:
        self.expected = expected
        self.at_least_once = at_least_once
        self.counts = [0, 0]
        self.values = 0

    @property
    def rings(self) -> tuple[list[int], list[int]]:
        """The even and the odd expected ring, oldest first."""
        return expected_ring(EVEN, self.counts[EVEN]), expected_ring(ODD, self.counts[ODD])

    def check(self, ts: Any, window: Sequence[int]) -> None:
        """Check one window; raises :class:`ValidationError` with the message if it fails."""
        self.values += 1
        if len(window) == 4:
            a, b, c, d = window
            parity = d & 1
            # The common case: exactly the window expected next, which passes
            # every rule. Small values go the long way because of the clamping.
            newest = 2 * self.counts[parity] + 2 - parity
            if d == newest and 7 <= d <= TESTABLE_MAX and a == d - 6 and b == d - 4 and c == d - 2:
                self.counts[parity] += 1
                return
        self._check_rules(ts, window)

    def _check_rules(self, ts: Any, window: Sequence[int]) -> None:
        shown = format_window(window)
        for name, rule in WINDOW_RULES:
            if not rule(window):
                raise ValidationError(
                    f"{name} test failed at {ts} on {shown} after {self.values} values"
                )
        parity = window[3] % 2
        ring = self._push(parity, window[3])
        if list(window) != ring:
            raise ValidationError(
                f"Sequentiality test failed at {ts}. Expected {format_window(ring)} "
                f"but got {shown} after {self.values} values"
            )

    def _push(self, parity: int, newest: int) -> list[int]:
        """Step 7's push (and ``-a`` reset); returns the ring the window must equal."""
        count = self.counts[parity] + 1
        if self.at_least_once and newest < newest_expected(parity, count):
            # A replay: restart the ring so that it ends at this window.
            count = newest // 2 + parity
        self.counts[parity] = count
        return expected_ring(parity, count)

    def accept_expected(self, parity: int, n: int) -> None:
        """Account for ``n`` windows that were each exactly the one expected next."""
        self.counts[parity] += n
        self.values += n

    def finish(self) -> None:
        """The final checks; raises :class:`ValidationError` if either fails."""
        ring0, ring1 = self.rings
        r0, r1 = ring0[3], ring1[3]
        hi, lo = (r0, r1) if r0 > r1 else (r1, r0)
        tail = (
            f"test failed with final windows {format_window(ring0)} and {format_window(ring1)}"
            f" and expected value {self.expected} after {self.values} values"
        )
        if hi != self.expected:
            raise ValidationError("Expected max " + tail)
        if lo != self.expected - 1:
            raise ValidationError("Expected difference " + tail)


def validate(
    windows: Iterable[tuple[Any, Sequence[int]]],
    expected: int = 1000,
    at_least_once: bool = False,
) -> Result:
    """Check every ``(ts, window)`` and then the final windows; never raises for bad data."""
    validator = Validator(expected, at_least_once)
    check = validator.check
    try:
        for ts, window in windows:
            check(ts, window)
        validator.finish()
    except ValidationError as err:
        return Result(False, str(err), validator.values)
    return Result(True, SUCCESS, validator.values)
