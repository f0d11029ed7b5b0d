"""Flow control on its own (machida/runtime/flow.py): gates, pause reasons, water marks."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from machida.runtime.flow import LINK_HIGH_WATER, LINK_LOW_WATER, FlowControl, sink_reason


class Recorder:
    """Each on_change call, as (reading_sources, reading_links, paused)."""

    def __init__(self) -> None:
        self.calls: list[tuple[bool, bool, bool]] = []

    def __call__(self, flow: FlowControl) -> None:
        self.calls.append((flow.reading_sources, flow.reading_links, flow.paused))


def test_nothing_is_read_until_its_gate_opens():
    changes = Recorder()
    flow = FlowControl(changes)
    assert (flow.reading_sources, flow.reading_links) == (False, False)
    flow.open_links()
    assert (flow.reading_sources, flow.reading_links) == (False, True)
    flow.open_sources()
    assert (flow.reading_sources, flow.reading_links) == (True, True)
    flow.open_sources(False)
    assert changes.calls == [(False, True, False), (True, True, False), (False, True, False)]


def test_any_reason_holds_both_inputs_until_the_last_one_goes():
    changes = Recorder()
    flow = FlowControl(changes)
    flow.open_links()
    flow.open_sources()
    flow.pause("sink")
    flow.pause("log rotation")
    assert (flow.reading_sources, flow.reading_links, flow.paused) == (False, False, True)
    flow.resume("sink")
    assert flow.reasons == {"log rotation"} and not flow.reading_sources
    flow.resume("log rotation")
    assert flow.reading_sources and flow.reading_links
    # one call when the first reason came and one when the last went: the rest changed nothing
    assert changes.calls[-2:] == [(False, False, True), (True, True, False)]
    assert len(changes.calls) == 4


def test_two_blocked_sinks_hold_the_inputs_until_both_drain():
    changes = Recorder()
    flow = FlowControl(changes)
    flow.open_links()
    flow.open_sources()
    flow.sink_blocked("A", True)
    flow.sink_blocked("B", True)
    flow.sink_blocked("A", False)  # A drained, B is still over its high mark
    assert flow.paused and not flow.reading_sources and not flow.reading_links
    assert flow.reasons == {sink_reason("B")}
    flow.sink_blocked("B", False)
    assert flow.reading_sources and flow.reading_links
    assert changes.calls[-2:] == [(False, False, True), (True, True, False)]


def test_a_reason_before_the_gates_open_is_still_reported_as_a_pause():
    changes = Recorder()
    flow = FlowControl(changes)
    flow.sink_blocked("P", True)
    assert changes.calls == [(False, False, True)]
    flow.open_links()  # the gate is open, but the sink still holds everything
    assert not flow.reading_links
    flow.sink_blocked("P", False)
    assert changes.calls[-1] == (False, True, False)


def test_a_link_pauses_at_its_high_mark_and_resumes_under_its_low_mark():
    flow = FlowControl()
    flow.open_links()
    flow.link_backlog("worker-2", LINK_HIGH_WATER - 1)
    assert not flow.paused
    flow.link_backlog("worker-2", LINK_HIGH_WATER)
    assert flow.reasons == {"link:worker-2"}
    flow.link_backlog("worker-2", LINK_LOW_WATER)  # between the marks: still held
    assert flow.paused
    flow.link_backlog("worker-3", LINK_HIGH_WATER + 5)
    flow.link_backlog("worker-2", LINK_LOW_WATER - 1)
    assert flow.reasons == {"link:worker-3"}
    flow.link_backlog("worker-3", 0)
    assert not flow.paused and flow.reading_links


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("pause"), st.sampled_from(["sink", "link:a", "rotation"])),
        st.tuples(st.just("resume"), st.sampled_from(["sink", "link:a", "rotation"])),
        st.tuples(st.just("open_sources"), st.booleans()),
        st.tuples(st.just("open_links"), st.none()),
        st.tuples(st.just("link_backlog"), st.integers(0, 2 * LINK_HIGH_WATER)),
    ),
    max_size=40,
)


@given(OPERATIONS)
def test_reading_follows_the_gates_and_reasons_and_every_change_is_reported_once(ops):
    changes = Recorder()
    flow = FlowControl(changes)
    seen = (False, False, False)
    expected_calls = []
    reasons: set[str] = set()
    sources = links = False
    for name, arg in ops:
        if name == "pause":
            flow.pause(arg)
            reasons.add(arg)
        elif name == "resume":
            flow.resume(arg)
            reasons.discard(arg)
        elif name == "open_sources":
            flow.open_sources(arg)
            sources = arg
        elif name == "open_links":
            flow.open_links()
            links = True
        else:
            flow.link_backlog("peer", arg)
            if arg >= LINK_HIGH_WATER:
                reasons.add("link:peer")
            elif arg < LINK_LOW_WATER:
                reasons.discard("link:peer")
        state = (sources and not reasons, links and not reasons, bool(reasons))
        assert (flow.reading_sources, flow.reading_links, flow.paused) == state
        if state != seen:
            expected_calls.append(state)
            seen = state
    assert changes.calls == expected_calls
