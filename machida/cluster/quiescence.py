"""When the cluster has nothing in flight: the clean-shutdown decision, with no I/O.

The initializer polls every worker's counters (``sent``, ``applied`` and the
unacknowledged ``backlog`` of its data links) in rounds. Nothing is in flight
once two complete rounds in a row show the same totals and no unacknowledged
record anywhere: every record sent has then been acknowledged, that is,
applied and its output handed to the kernel. ``sent`` and ``applied`` are not
compared with each other, because a restarted worker's ``applied`` starts
again from zero.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

COUNTERS = ("sent", "applied", "backlog")


class Quiescence:
    """Feed it each polling round; it says when the cluster is quiescent."""

    __slots__ = ("_previous",)

    def __init__(self) -> None:
        self._previous: tuple[int, ...] | None = None

    def round(self, counts: Iterable[Mapping[str, int]], complete: bool) -> bool:
        """One round's counts (every worker that answered, the initializer included), and
        whether every worker answered; True once nothing is in flight."""
        rows = list(counts)
        totals = tuple(sum(int(row[name]) for row in rows) for name in COUNTERS)
        quiet = complete and totals[2] == 0 and totals == self._previous
        self._previous = totals if complete else None
        return quiet
