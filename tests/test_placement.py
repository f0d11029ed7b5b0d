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
        counts = Counter(after)
        assert set(counts) <= set(workers)
        spread = [counts.get(w, 0) for w in workers]
        assert max(spread) - min(spread) <= 1
        base, extra = divmod(len(before), len(workers))
        had = Counter(o for o in before if o in workers)
        ranked = sorted(workers, key=lambda w: (-had[w], workers.index(w)))
        share = {w: base + (rank < extra) for rank, w in enumerate(ranked)}
        needed = sum(1 for o in before if o not in workers)
        needed += sum(max(0, had[w] - share[w]) for w in workers)
        moved = [i for i, (a, b) in enumerate(zip(before, after)) if a != b]
        assert len(moved) == needed, (before, after)  # none moves but what must
        assert all(before[i] not in workers or had[before[i]] > share[before[i]] for i in moved)


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
