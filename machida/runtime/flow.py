"""Flow control of one worker: which of its inputs may be read now, and why not. No I/O.

A worker reads two kinds of input: the source connections (on the initializer)
and the data links that other workers dial to it. Two gates and a set of pause
reasons decide what may be read:

* the sources gate opens once the cluster is ready (every worker reported
  ready) and closes when the worker stops taking input;
* the links gate opens once this worker has its topology, so that a
  restarted worker's upstream cannot have a batch applied before the states
  and sinks exist;
* any pause reason holds both kinds: a link to another worker with
  :data:`LINK_HIGH_WATER` unacknowledged records (until it is back under
  :data:`LINK_LOW_WATER`), a sink whose buffer passed its high mark (each sink
  its own reason), a log
  rotation. Holding the incoming links too is what carries backpressure
  along a chain of workers.

:class:`FlowControl` calls ``on_change(flow)`` whenever what may be read, or
whether any reason holds, changes; the process shell then pauses or resumes
the transports and reports a pause that lasts.
"""

from __future__ import annotations

from typing import Callable

# machida.md §6.4: pause inputs at 16 384 unacknowledged messages on a link, resume below 8 192
# (some 30 ms of input at full speed: enough to keep a link busy, little to hold and replay).
LINK_HIGH_WATER = 16_384
LINK_LOW_WATER = 8_192


def link_reason(peer: str) -> str:
    """The pause reason of the link to ``peer``, as the pause report names it."""
    return f"link:{peer}"


def sink_reason(pipeline: str) -> str:
    """The pause reason of the sink connection of ``pipeline``: each sink holds the inputs
    on its own, so that one draining does not reopen them while another is still full."""
    return f"sink:{pipeline}"


class FlowControl:
    """The gates and pause reasons of one worker's inputs."""

    __slots__ = ("_on_change", "_seen", "links_open", "reasons", "sources_open")

    def __init__(self, on_change: Callable[[FlowControl], None] | None = None) -> None:
        self.reasons: set[str] = set()
        self.sources_open = False
        self.links_open = False
        self._on_change = on_change
        self._seen = self._state()

    @property
    def reading_sources(self) -> bool:
        return self.sources_open and not self.reasons

    @property
    def reading_links(self) -> bool:
        return self.links_open and not self.reasons

    @property
    def paused(self) -> bool:
        """Whether backpressure (any reason) holds the inputs."""
        return bool(self.reasons)

    def pause(self, reason: str) -> None:
        if reason not in self.reasons:
            self.reasons.add(reason)
            self._changed()

    def resume(self, reason: str) -> None:
        if reason in self.reasons:
            self.reasons.discard(reason)
            self._changed()

    def open_sources(self, is_open: bool = True) -> None:
        self.sources_open = is_open
        self._changed()

    def open_links(self) -> None:
        self.links_open = True
        self._changed()

    def link_backlog(self, peer: str, unacked: int) -> None:
        """The link to ``peer`` holds ``unacked`` records: pause at the high mark, resume under
        the low one (in between, whatever holds stays)."""
        if unacked >= LINK_HIGH_WATER:
            self.pause(link_reason(peer))
        elif unacked < LINK_LOW_WATER:
            self.resume(link_reason(peer))

    def sink_blocked(self, pipeline: str, blocked: bool) -> None:
        """The sink of ``pipeline`` passed its high mark (``blocked``) or drained under its
        low one."""
        (self.pause if blocked else self.resume)(sink_reason(pipeline))

    def _state(self) -> tuple[bool, bool, bool]:
        return self.reading_sources, self.reading_links, self.paused

    def _changed(self) -> None:
        state = self._state()
        if state != self._seen:
            self._seen = state
            if self._on_change is not None:
                self._on_change(self)
