"""Unit and property tests of wallaroo_tools.validation, the validator's rules.

Windows go in as lists of ints, messages come out; no files or bytes. The
property tests check the invariants of tools.md §5.3 on generated runs and
compare every outcome with the literal model in test_validator_model.py.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validator_model import (
    interleavings,
    model,
    mutated_runs,
    parity_of,
    recorded,
    restamp,
    small_windows,
)

from wallaroo_tools.layouts import parse_window
from wallaroo_tools.validation import (
    EVEN,
    ODD,
    TESTABLE_MAX,
    ValidationError,
    Validator,
    expected_ring,
    format_window,
    increments_ok,
    no_non_leading_zeroes_ok,
    parity_ok,
    size_ok,
    validate,
)
from wallaroo_tools.validation import testable_range_ok as range_ok  # not collected as a test

PROPERTY = settings(max_examples=60, deadline=None)


def windows_of(records):
    return [(ts, parse_window(payload)) for ts, payload in records]


def failure(windows, expected=1000, at_least_once=False) -> str:
    result = validate(windows, expected, at_least_once)
    assert not result.ok
    return result.message


# -- The single rules, with the spec's own examples.


def test_size():
    assert size_ok([1, 3, 5, 7])
    assert not size_ok([1, 3, 5])
    assert not size_ok([92, 94, 96, 98, 100])
    assert not size_ok([])


@pytest.mark.parametrize(
    ("window", "ok"),
    [([0, 0, 0, 1], True), ([2, 4, 6, 8], True), ([0, 0, 0, 0], False), ([98, 100, 0, 102], False)],
)
def test_no_non_leading_zeroes(window, ok):
    assert no_non_leading_zeroes_ok(window) is ok


@pytest.mark.parametrize(
    ("window", "ok"),
    [
        ([0, 0, 1, 3], True),
        ([0, 0, 0, 2], True),
        ([98, 100, 101, 102], False),
        ([1, 3, 5, 6], False),
    ],
)
def test_parity(window, ok):
    assert parity_ok(window) is ok


def test_testable_range():
    assert range_ok([0, 0, 0, TESTABLE_MAX])
    assert not range_ok([0, 0, 0, TESTABLE_MAX + 1])


@pytest.mark.parametrize(
    ("window", "ok"),
    [
        ([0, 0, 0, 1], True),
        ([0, 0, 1, 3], True),
        ([2, 4, 6, 8], True),
        ([0, 2, 3, 5], False),
        ([95, 97, 99, 81], False),
        ([1, 1, 3, 5], False),
        ([0, 0, 0, 4], False),
        ([0, 3, 5, 7], False),
        ([0, 0, 3, 5], False),
        ([0, 0, 0, 3], False),
        ([0, 0, 1, 2], False),
    ],
)
def test_increments(window, ok):
    assert increments_ok(window) is ok


def test_expected_ring_starts_at_zeroes_and_slides():
    assert expected_ring(EVEN, 0) == expected_ring(ODD, 0) == [0, 0, 0, 0]
    assert [expected_ring(ODD, k) for k in (1, 2, 3, 4)] == [
        [0, 0, 0, 1],
        [0, 0, 1, 3],
        [0, 1, 3, 5],
        [1, 3, 5, 7],
    ]
    assert expected_ring(EVEN, 500) == [994, 996, 998, 1000]


def test_format_window_has_no_spaces():
    assert format_window([1, 2, 3, 4]) == "[1,2,3,4]"
    assert format_window([]) == "[]"


# -- Messages, in the spec's order of checks.


@pytest.mark.parametrize(
    ("window", "name"),
    [
        ([1, 3, 5], "Size"),
        ([0, 0, 0, 0], "No non-leading zeroes"),
        ([0, 2, 3, 4], "Parity"),
        ([2**63 - 5, 2**63 - 3, 2**63 - 1, 2**63 + 1], "Testable range"),
        ([0, 2, 4, 8], "Increments"),
    ],
)
def test_window_check_messages(window, name):
    shown = format_window(window)
    assert failure([("t0", [0, 0, 0, 1]), ("t1", window)]) == (
        f"{name} test failed at t1 on {shown} after 2 values"
    )


@pytest.mark.parametrize(
    ("window", "name"),
    [
        ([0, 0, 0, 0, 0], "Size"),  # no non-zero value either
        ([1, 0, 2, 3], "No non-leading zeroes"),  # mixed parity too
        ([1, 3, 4, 2**63 + 1], "Parity"),  # out of range too
        ([2**63 - 3, 2**63 - 1, 2**63 + 3, 2**63 + 5], "Testable range"),  # a step of 4 too
    ],
)
def test_the_first_check_that_fails_names_the_failure(window, name):
    assert failure([(7, window)]).startswith(f"{name} test failed at 7 on {format_window(window)}")


def test_sequentiality_message_shows_the_ring_after_the_push():
    assert failure([(0, [0, 0, 0, 1]), (1, [0, 1, 3, 5])]) == (
        "Sequentiality test failed at 1. Expected [0,0,1,3] but got [0,1,3,5] after 2 values"
    )


def test_final_checks_take_the_higher_newest_value_as_the_max():
    run = windows_of(recorded(list(range(1, 1002))))
    assert validate(run, 1001).ok  # odd is the higher one here
    assert failure(run, 1000) == (
        "Expected max test failed with final windows [994,996,998,1000] and"
        " [995,997,999,1001] and expected value 1000 after 1001 values"
    )


def test_validator_object_checks_incrementally():
    validator = Validator(expected=4)
    for ts, window in enumerate([[0, 0, 0, 2], [0, 0, 0, 1], [0, 0, 1, 3], [0, 0, 2, 4]]):
        validator.check(ts, window)
    validator.finish()
    assert validator.values == 4
    assert validator.rings == ([0, 0, 2, 4], [0, 0, 1, 3])
    with pytest.raises(ValidationError, match=r"^Sequentiality test failed at 9\."):
        validator.check(9, (0, 0, 2, 4))


def test_windows_may_be_tuples():
    assert validate(enumerate([(0, 0, 0, 1), (0, 0, 0, 2)]), expected=2).ok


# -- At-least-once mode.


def test_a_full_replay_passes_only_with_at_least_once():
    once = recorded(list(range(1, 101)))
    windows = windows_of(restamp(once + once))
    assert validate(windows, 100, at_least_once=True).ok
    assert failure(windows, 100) == (
        "Sequentiality test failed at 100. Expected [95,97,99,101] but got [0,0,0,1]"
        " after 101 values"
    )


def test_reset_lands_the_counter_after_the_replayed_window():
    validator = Validator(at_least_once=True)
    for ts, window in enumerate([[0, 0, 0, 1], [0, 0, 1, 3], [0, 1, 3, 5], [0, 0, 1, 3]]):
        validator.check(ts, window)
    assert validator.rings[ODD] == [0, 0, 1, 3]
    validator.check(4, [0, 1, 3, 5])  # and continues from there
    for ts, window in enumerate([[0, 0, 0, 2], [0, 0, 2, 4], [0, 0, 0, 2]]):
        validator.check(ts, window)
    assert validator.rings[EVEN] == [0, 0, 0, 2]


def test_a_gap_fails_even_with_at_least_once():
    windows = [(0, [0, 0, 0, 1]), (1, [0, 1, 3, 5])]
    assert failure(windows, at_least_once=True).startswith("Sequentiality test failed at 1.")


def test_an_inconsistent_replayed_window_fails_with_at_least_once():
    run = windows_of(recorded(list(range(1, 21))))
    windows = [*run, (99, [5, 7, 9, 13])]
    assert failure(windows, 20, at_least_once=True).startswith("Increments test failed at 99")
    # After a replay the run must go on without a gap.
    windows = [*run, (99, [3, 5, 7, 9]), (100, [5, 7, 9, 11]), (101, [9, 11, 13, 15])]
    assert failure(windows, 20, at_least_once=True) == (
        "Sequentiality test failed at 101. Expected [7,9,11,13] but got [9,11,13,15]"
        " after 23 values"
    )


# -- Properties (hypothesis).


@PROPERTY
@given(interleavings())
def test_a_correct_run_passes_in_both_modes(values):
    windows = windows_of(recorded(values))
    n = len(values)
    assert validate(windows, n).ok
    assert validate(windows, n, at_least_once=True).ok


@st.composite
def duplicated(draw):
    """A correct run with one window repeated before its parity's next window."""
    values = draw(interleavings())
    records = recorded(values)
    i = draw(st.integers(0, len(records) - 1))
    parity = values[i] % 2
    later = [j for j in range(i + 1, len(values)) if values[j] % 2 == parity]
    limit = later[0] if later else len(records)
    where = draw(st.integers(i + 1, limit))
    return len(values), restamp([*records[:where], records[i], *records[where:]])


@PROPERTY
@given(duplicated())
def test_a_duplicated_window_passes_only_with_at_least_once(case):
    n, records = case
    windows = windows_of(records)
    assert validate(windows, n, at_least_once=True).ok
    assert failure(windows, n).startswith("Sequentiality test failed at ")


@PROPERTY
@given(interleavings(), st.data())
def test_going_back_to_any_earlier_window_passes_with_at_least_once(values, data):
    records = recorded(values)
    i = data.draw(st.integers(0, len(records) - 1))
    j = data.draw(st.integers(i, len(records)))
    replayed = [r for r in records[i:j] if parity_of(r[1]) == parity_of(records[i][1])]
    windows = windows_of(restamp(records[:j] + replayed + records[j:]))
    assert validate(windows, len(values), at_least_once=True).ok


@PROPERTY
@given(interleavings(), st.data())
def test_a_dropped_window_fails_in_both_modes(values, data):
    records = recorded(values)
    i = data.draw(st.integers(0, len(records) - 1))
    windows = windows_of(restamp(records[:i] + records[i + 1 :]))
    later = [j for j in range(i + 1, len(values)) if values[j] % 2 == values[i] % 2]
    for mode in (False, True):
        message = failure(windows, len(values), at_least_once=mode)
        if later:
            # The parity's next window, one place earlier now, shows the gap.
            assert message.startswith(f"Sequentiality test failed at {later[0] - 1}.")
        else:
            assert message.startswith(("Expected max", "Expected difference"))


@settings(max_examples=150, deadline=None)
@given(mutated_runs(), st.integers(0, 70), st.booleans())
def test_validate_agrees_with_the_literal_model(records, expected, at_least_once):
    result = validate(windows_of(records), expected, at_least_once)
    assert result.message == model(records, expected, at_least_once)
    assert result.ok == (result.message == "Validation successful!")


@settings(max_examples=150, deadline=None)
@given(st.lists(small_windows, max_size=12), st.booleans())
def test_any_windows_get_the_models_verdict(windows, at_least_once):
    records = [(i, format_window(w).encode()) for i, w in enumerate(windows)]
    result = validate(enumerate(windows), 6, at_least_once)
    assert result.message == model(records, 6, at_least_once)
