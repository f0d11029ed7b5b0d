"""The placement of keys and its rebalancing (machida/app/plan.py), and shrink decisions
(machida/cluster/autoscale.py): pure functions, checked on examples and by Hypothesis."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.app.plan import Placement, round_robin
from machida.cluster.autoscale import decide_shrink

NAMES = ["initializer", "w2", "w3", "w4", "w5", "w6"]


def test_the_first_placement_is_the_2017_round_robin():
    placement = round_robin(["initializer", "w2"], {"s": (0, 1, 2), "t": ("a",)})
    assert placement.owners == (("s", ("initializer", "w2", "initializer")),
                                ("t", ("initializer",)))  # fmt: skip
    assert placement.version == 1


@pytest.mark.parametrize(("owners", "workers", "after"), [
    (("i", "i"), ["i", "j"], ("i", "j")),  # sequence_window grows from one to two
    (("i", "j"), ["i", "j", "k"], ("i", "j")),  # two keys, three workers: nothing moves
    (("i", "j"), ["i"], ("i", "i")),  # and shrinks back
    (("i", "j", "i", "j"), ["i", "j", "k"], ("i", "j", "i", "k")),  # a tie: i, first, keeps two
    (("i", "i", "i", "j"), ["i", "j", "k"], ("i", "i", "k", "j")),  # i had most: keeps two
    (("i", "j", "k", "i", "j", "k"), ["i", "k"], ("i", "i", "k", "i", "k", "k")),  # j leaves
])  # fmt: skip
def test_rebalancing_examples(owners, workers, after):
    placement = Placement(tuple(sorted(set(owners))), (("s", owners),), 3)
    new = placement.rebalanced(workers)
    assert new.owners == (("s", after),) and new.version == 4
    assert new.workers == tuple(workers)


PLACEMENTS = st.integers(1, 6).flatmap(lambda n: st.tuples(
    st.just(NAMES[:n]),
    st.lists(st.lists(st.sampled_from(NAMES[:n]), min_size=1, max_size=40), min_size=1,
             max_size=3),
    st.sets(st.sampled_from(NAMES[1:])),
))  # fmt: skip


@given(PLACEMENTS)
def test_a_rebalanced_placement_evens_out_and_moves_as_few_keys_as_it_can(case):
    members, states, changed = case
    workers = ["initializer", *[n for n in NAMES[1:] if (n in members) != (n in changed)]]
    old = Placement(tuple(members), tuple((f"s{i}", tuple(o)) for i, o in enumerate(states)))
    new = old.rebalanced(workers)
    assert new == old.rebalanced(workers)  # deterministic
    for (_, before), (_, after) in zip(old.owners, new.owners):
        check_evened_out(before, after, workers)


def check_evened_out(before: tuple, after: tuple, holders: list[str]) -> None:
    """``after`` spreads the keys over ``holders`` evenly, and moves only the keys of workers
    that may not hold any and those a worker has beyond its share."""
    counts = Counter(after)
    assert set(counts) <= set(holders)
    spread = [counts.get(w, 0) for w in holders]
    assert max(spread) - min(spread) <= 1
    base, extra = divmod(len(before), len(holders))
    had = Counter(o for o in before if o in holders)
    ranked = sorted(holders, key=lambda w: (-had[w], holders.index(w)))
    share = {w: base + (rank < extra) for rank, w in enumerate(ranked)}
    needed = sum(1 for o in before if o not in holders)
    needed += sum(max(0, had[w] - share[w]) for w in holders)
    moved = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
    assert len(moved) == needed, (before, after)  # none moves but what must
    assert all(before[i] not in holders or had[before[i]] > share[before[i]] for i in moved)


def test_state_off_initializer_places_the_keys_on_the_other_workers():
    keys = {"s": (0, 1, 2), "t": ("a",)}
    placement = round_robin(["initializer", "w2", "w3"], keys, state_off_initializer=True)
    assert placement.owners == (("s", ("w2", "w3", "w2")), ("t", ("w2",)))
    assert round_robin(["initializer"], keys, True).owners == (("s", ("initializer",) * 3),
                                                               ("t", ("initializer",)))  # fmt: skip
    again = Placement.from_json(placement.to_json())
    assert again == placement and again.state_off_initializer
    assert "state_off_initializer" not in round_robin(["initializer"], keys).to_json()


@pytest.mark.parametrize(("owners", "workers", "after"), [
    (("i", "i"), ["i", "j"], ("j", "j")),  # a joiner takes every key off the initializer
    (("j", "j"), ["i", "j", "k"], ("j", "k")),  # and shares them with the next one
    (("j", "k"), ["i", "k"], ("k", "k")),  # j leaves: its key goes to k, not to i
    (("k", "k"), ["i"], ("i", "i")),  # the initializer alone holds them all again
])  # fmt: skip
def test_state_off_initializer_is_kept_by_every_rebalancing(owners, workers, after):
    placement = Placement(tuple(sorted(set(owners))), (("s", owners),), 3, True)
    new = placement.rebalanced(workers)
    assert new.owners == (("s", after),) and new.state_off_initializer


@given(PLACEMENTS)
def test_with_state_off_initializer_it_holds_keys_only_alone(case):
    members, states, changed = case
    workers = ["initializer", *[n for n in NAMES[1:] if (n in members) != (n in changed)]]
    old = Placement(tuple(members), tuple((f"s{i}", tuple(o)) for i, o in enumerate(states)),
                    1, True)  # fmt: skip
    new = old.rebalanced(workers)
    for (_, before), (_, after) in zip(old.owners, new.owners):
        assert ("initializer" in after) == (workers == ["initializer"])
        check_evened_out(before, after, workers[1:] or workers)  # its keys go as a leaver's


MEMBERS = ["initializer", "w2", "w3", "w4"]


@pytest.mark.parametrize(("text", "leaving", "answer"), [
    ("?", [], ""),
    ("2", ["w2", "w3"], "Shrinking by 2 workers!"),
    ("9", ["w2", "w3", "w4"], "Shrinking by 3 workers!"),
    ("0", [], "Cannot shrink 0 workers!"),
    ("w4, w2", ["w4", "w2"], "Shrinking by 2 workers!"),
    ("initializer", [], "Invalid shrink targets! initializer cannot leave: the sources are on it."),
    ("w2,nobody", [], "Invalid shrink targets! There is no worker named 'nobody'."),
    ("w3", [], "Invalid shrink targets! w3 is already leaving."),
    ("w2,w2", [], "Invalid shrink targets! A worker is named twice."),
    (",", [], "Invalid shrink targets! No worker named."),
])  # fmt: skip
def test_a_shrink_request_is_read_as_wallaroo_sent_it(text, leaving, answer):
    decision = decide_shrink(text, MEMBERS, busy={"w3"} if text == "w3" else set())
    assert decision.query == (text == "?")
    assert (decision.leaving, decision.answer) == (leaving, answer)


def test_a_count_skips_the_workers_already_leaving():
    assert decide_shrink("1", MEMBERS, busy={"w2"}).leaving == ["w3"]
