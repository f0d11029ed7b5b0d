"""What resilience keeps of a worker's data plane, and puts back after a crash. No I/O.

:class:`DurableState` is the host that :class:`machida.durability.resilience.Resilience`
works against: the plane's states and serializers, what it has applied from each upstream
worker (its origins), how many records each source took in, and its upstream backup (per
downstream worker, the batches not yet acknowledged), with a restore for each of them.
"""

from __future__ import annotations

from typing import Any, Callable

from machida.app.callbacks import Callbacks
from machida.runtime.dataplane import DataPlane, Outbound
from machida.wire.boundary import Batch, BoundaryDecoder, Dedup


class DurableState:
    """A :class:`~machida.durability.resilience.ResilienceHost` over a :class:`DataPlane`."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane

    @property
    def serializers(self) -> tuple[Callable[[Any], Any], Callable[[Any], Any]]:
        return self.plane.serializers

    @property
    def callbacks(self) -> Callbacks:
        return self.plane.callbacks

    @property
    def incarnation(self) -> int:
        return self.plane.incarnation

    @incarnation.setter
    def incarnation(self, value: int) -> None:
        self.plane.incarnation = value  # a recovered backup keeps its numbers

    @property
    def states(self) -> dict[str, dict[int, Any]]:
        return self.plane.states

    def flush(self) -> None:
        self.plane.flush()

    def origins(self) -> dict[str, tuple[int, int]]:
        """The newest ``(incarnation, seq)`` applied from each upstream worker."""
        return {n: (d.incarnation, d.seq) for n, d in self.plane.dedup.items()
                if d.incarnation is not None}  # fmt: skip

    def restore_origins(self, origins: dict[str, tuple[int, int]]) -> None:
        """What a recovered worker's event log says it applied from each upstream worker."""
        for upstream, (incarnation, seq) in origins.items():
            self.plane.dedup.setdefault(upstream, Dedup()).restore(incarnation, seq)

    def source_counts(self) -> dict[str, int]:
        """Records each source (by pipeline name) has taken in, for those that took any."""
        return {p.name: n for p, n in zip(self.plane.plan.pipelines, self.plane.accepted) if n}

    def restore_source_counts(self, counts: dict[str, int]) -> None:
        for p, pipeline in enumerate(self.plane.plan.pipelines):
            self.plane.accepted[p] = counts.get(pipeline.name, 0)

    def acks(self) -> dict[str, int]:
        """How far each downstream worker has acknowledged."""
        return {peer: out.backlog.acked for peer, out in self.plane.outbound.items()}

    def backups(self) -> dict[str, tuple[int, list[Batch]]]:
        """Each downstream worker's acknowledged mark and the batches it may still need."""
        return {peer: (out.backlog.acked, out.backlog.replay())
                for peer, out in self.plane.outbound.items()}  # fmt: skip

    def restore_link(self, peer: str, acked: int, next_seq: int, frames: list[bytes]) -> None:
        """A recovered worker's backup for ``peer``: re-sent, under the same numbers, once the
        link is up."""
        first, runs = next_seq, []
        for frame in frames:
            (event,) = BoundaryDecoder().feed(frame)
            first = min(first, event[1])
            runs += [[(p, step, key), is_int, values] for p, step, key, is_int, values in event[2]]
        out = self.plane.outbound.setdefault(peer, Outbound(peer))
        out.backlog.restore(first, runs, next_seq, acked)
