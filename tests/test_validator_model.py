"""A literal model of the validator's rules and run generators, shared by the validator tests.

The model follows tools.md §5.3 and §5.4 word for word (two explicit rings,
push, reset, compare), without the shortcuts of the real code, which keeps
only counters and skips expected windows as raw bytes. The property tests
compare the two on mutated runs. The strategies build the output of a
correct run with a random interleaving of the two parities.
"""

from __future__ import annotations

from hypothesis import strategies as st

from wallaroo_tools.fixtures import RunRecorder
from wallaroo_tools.layouts import WindowParseError, parse_window


def _show(values) -> str:
    return "[" + ",".join(map(str, values)) + "]"


def _window_failure(v: list[int]) -> str | None:
    if len(v) != 4:
        return "Size"
    nonzero = [i for i, x in enumerate(v) if x]
    if not nonzero or any(x == 0 for x in v[nonzero[0] :]):
        return "No non-leading zeroes"
    if any(v[i] != 0 and v[i] % 2 != v[i + 1] % 2 for i in range(3)):
        return "Parity"
    if v[3] > 2**63 - 1:
        return "Testable range"
    prev = v[0]
    for cur in v[1:]:
        d = (cur - prev) % 2**64
        if (d in (0, 1) and prev != 0) or d not in (0, 1, 2):
            return "Increments"
        prev = cur
    return None


def model(records, expected: int, at_least_once: bool) -> str:
    """The tool's message for ``records`` (``(ts, payload bytes)``): success or first failure."""
    rings = [[0, 0, 0, 0], [0, 0, 0, 0]]
    counts = [0, 0]
    c = 0
    for ts, payload in records:
        try:
            v = parse_window(payload, ts)
        except WindowParseError as err:
            return str(err)
        c += 1
        name = _window_failure(v)
        if name:
            return f"{name} test failed at {ts} on {_show(v)} after {c} values"
        cat = v[3] % 2
        counts[cat] += 1
        rings[cat] = [*rings[cat][1:], 2 * counts[cat] - cat]
        if at_least_once and v[3] < rings[cat][3]:
            rings[cat] = [max(0, v[3] - k) for k in (6, 4, 2, 0)]
            counts[cat] = v[3] // 2 + cat
        if v != rings[cat]:
            return (
                f"Sequentiality test failed at {ts}. Expected {_show(rings[cat])} but got"
                f" {_show(v)} after {c} values"
            )
    r0, r1 = rings[0][3], rings[1][3]
    hi, lo = (r0, r1) if r0 > r1 else (r1, r0)
    tail = (
        f" test failed with final windows {_show(rings[0])} and {_show(rings[1])}"
        f" and expected value {expected} after {c} values"
    )
    if hi != expected:
        return "Expected max" + tail
    if lo != expected - 1:
        return "Expected difference" + tail
    return "Validation successful!"


@st.composite
def interleavings(draw, max_n: int = 120) -> list[int]:
    """Values 1..n, each parity in order, the two parities merged at random."""
    n = draw(st.integers(1, max_n))
    queues = [list(range(2, n + 1, 2)), list(range(1, n + 1, 2))]
    picks = draw(st.lists(st.booleans(), min_size=n, max_size=n))
    order = []
    for odd_first in picks:
        side = int(odd_first) if queues[int(odd_first)] else 1 - int(odd_first)
        order.append(queues[side].pop(0))
    return order


def recorded(values: list[int]) -> list[tuple[int, bytes]]:
    """The ``(ts, payload)`` records a correct run emits for ``values``, in that order."""
    run = RunRecorder()
    run.write(values)
    return run.records


def restamp(records: list[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    """The records with ts 0, 1, 2, ... as the framed and lines layouts number them."""
    return [(i, payload) for i, (_, payload) in enumerate(records)]


def parity_of(payload: bytes) -> int:
    return parse_window(payload)[3] % 2


@st.composite
def near_windows(draw) -> list[int]:
    """An expected window with one value nudged: the rules must tell which check fails."""
    newest = draw(st.integers(1, 30))
    window = [max(0, newest - k) for k in (6, 4, 2, 0)]
    i = draw(st.integers(0, 3))
    window[i] = max(0, window[i] + draw(st.integers(-3, 3)))
    return window


small_windows = st.one_of(st.lists(st.integers(0, 40), min_size=0, max_size=6), near_windows())


@st.composite
def mutated_runs(draw, junk=None):
    """A correct run with a few random edits: drops, copies, swaps, made-up windows.

    Edits may also respace a payload as ``[a, b, c, d]`` or put ``junk`` in its place.
    """
    records = [payload for _, payload in recorded(draw(interleavings(max_n=60)))]
    for _ in range(draw(st.integers(0, 4))):
        i = draw(st.integers(0, len(records) - 1))
        edit = draw(st.sampled_from(["drop", "copy", "swap", "invent", "respace", "junk"]))
        if edit == "drop" and len(records) > 1:
            del records[i]
        elif edit == "copy":
            records.insert(draw(st.integers(0, len(records))), records[i])
        elif edit == "swap":
            j = draw(st.integers(0, len(records) - 1))
            records[i], records[j] = records[j], records[i]
        elif edit == "invent":
            records[i] = _show(draw(small_windows)).encode()
        elif edit == "respace":
            records[i] = records[i].replace(b",", b", ")
        elif edit == "junk" and junk is not None:
            records[i] = draw(junk)
    return list(enumerate(records))


# -- The model must itself agree with the spec before it can judge the real code.


def test_model_passes_a_correct_run():
    assert model(recorded(list(range(1, 1001))), 1000, False) == "Validation successful!"


def test_model_reproduces_the_spec_examples():
    run = RunRecorder()
    run.write(range(1, 101))
    run.write(range(81, 101))
    assert model(run.records, 100, False) == (
        "Increments test failed at 100 on [95,97,99,81] after 101 values"
    )
    replay = recorded(list(range(1, 11)))
    replay += recorded(list(range(1, 11)))
    assert model(restamp(replay), 10, True) == "Validation successful!"
    assert model(restamp(replay), 10, False).startswith("Sequentiality test failed at 10.")
    assert model([], 1000, False).startswith("Expected max test failed with final windows")
