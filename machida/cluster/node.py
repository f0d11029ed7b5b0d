"""What the control plane may ask of a worker, declared as protocols.

The cluster roles steer a worker through :class:`Node` only, and talk to other
workers through :class:`~machida.wire.control.ControlLink` connections only. The
worker process (:class:`machida.process.Process`) implements :class:`Node`;
tests use small fakes of both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

from machida.app.plan import Placement
from machida.durability.recovery import RecoveryRecord
from machida.external import ExternalCommands
from machida.wire.control import Address, ControlHandler, ControlLink

__all__ = ["Address", "ControlLink", "Node", "Record"]


@dataclass(frozen=True)
class Record:
    """What a worker's recovery files record of the cluster: its members in join order with
    their ``(control, data)`` addresses, the placement of the keys, and a change of placement
    in progress (``target``, with the ``leaving`` workers)."""

    workers: list[str]
    addresses: dict[str, tuple[Address, Address]]
    placement: Placement
    target: Placement | None = None
    leaving: tuple[str, ...] = ()
    requested_count: int | None = None  # the initializer's --worker-count


class Node(Protocol):
    """The worker a role steers."""

    name: str
    # The topology recorded by an earlier run when this one restarted from recovery files;
    # None on a fresh start, and again once recovery is complete.
    recovered: RecoveryRecord | None

    @property
    def running(self) -> bool:
        """Whether the worker's process has not been told to finish yet."""

    def fingerprint_parts(self) -> list[str]:
        """The lines of this worker's topology fingerprint, compared at admission."""

    async def listen(self, accepting: ControlHandler,
                     commands: ExternalCommands) -> tuple[Address, Address]:  # fmt: skip
        """Bind this worker's listeners (connections accepted on its control listener go to
        ``accepting``, the external channel's requests to ``commands``); the bound control
        and data addresses."""

    def build(self, placement: Placement) -> bool:
        """The placement of the keys is known: topology, sinks, event log (a recovering worker
        restores what it holds). False if that failed (the error is printed and the process
        is ending)."""

    def save_record(self, record: Record) -> None:
        """Write the recovery files for this record of the cluster."""

    def change_placement(self, placement: Placement,
                         done: Callable[[], None]) -> list[tuple[str, int, str]]:  # fmt: skip
        """Route by ``placement`` from now on and hand over every key held here and owned
        elsewhere; ``done()`` once each is acknowledged by its new owner and released here
        (never called when there is nothing to hand over). Returns the handoffs
        ``(state, key index, new owner)``."""

    def resume_placement(self) -> None:
        """A change of placement is complete: a fresh state for each owned key that no one
        could hand over."""

    def forget(self, peer: str) -> None:
        """``peer`` has left the cluster: close the boundary to it and forget it."""

    def hold_sources(self, held: bool) -> None:
        """Stop (or start again) reading the sources, keeping their connections."""

    def connect(self, peer: str, data: Address) -> None:
        """Dial the data link to ``peer`` (or re-dial it at a new address)."""

    async def sinks_connected(self) -> None:
        """Wait until every sink connection is up."""

    def start_sources(self) -> None:
        """The cluster is ready: read the source connections."""

    def stop_sources(self) -> None:
        """Stop reading the sources at once: close their listeners and connections."""

    def flush(self) -> None:
        """Send what the data plane holds (before counting)."""

    def counts(self) -> dict[str, int]:
        """``sent``, ``applied`` and unacknowledged ``backlog`` of the data links."""

    def leftovers(self) -> str:
        """What is still in flight here, for a shutdown that could not drain."""

    async def drain_sinks(self, seconds: float) -> bool:
        """Wait until every sink has handed its bytes to the kernel."""

    def quiet_links(self) -> None:
        """Links that drop from now on are neither reported nor redialled."""

    def close(self, clean: bool) -> None:
        """Close every connection; a clean close also removes the recovery files."""

    def rotate_log(self) -> None:
        """An external RotateLog for this worker."""

    def recovery_complete(self) -> None:
        """This worker, restarted, is back in the cluster."""

    def finish(self, code: int) -> None:
        """End the process with exit status ``code``."""
