"""What the initializer and a member share: control-message dispatch, the external channel's
requests and queries, and the shutdown ending."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Callable, ClassVar

from machida.aio import background
from machida.app.plan import Placement
from machida.cluster import queries
from machida.cluster.node import ControlLink, Node
from machida.console import say, warn
from machida.wire import external
from machida.wire.control import ControlHandler, ControlMessage

Reply = Callable[[bytes], None]

# machida.md §8.1: a clean shutdown that has not drained by then gives up.
DRAIN_DEADLINE_S = 30.0

Handler = Callable[[Any, ControlLink, Any], None]


class Role:
    """A cluster role steering ``node``: a :class:`~machida.wire.control.ControlHandler`
    whose messages each go to the handler for their type, and the engine behind the
    external channel's requests (:class:`machida.external.ExternalCommands`)."""

    # message class -> handler; a message a role does not handle ends the connection
    HANDLERS: ClassVar[dict[type, Handler]] = {}

    def __init__(self, node: Node, keys: dict[str, tuple]) -> None:
        self.node = node
        self.keys = keys  # each state's key list, for the partition queries
        self.shutting_down = False
        self.placement: Placement | None = None  # as this worker last learned it
        self.processing = False  # formed, and not in a change of placement

    def accepting(self) -> ControlHandler:
        """What connections accepted on this worker's control listener go to."""
        return self

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run ``coro`` beside the control reads; if it fails, the process ends with status 1."""
        background(coro, lambda: self.node.finish(1))

    def on_open(self, conn: ControlLink) -> None:
        """A control connection is up."""

    def on_close(self, conn: ControlLink) -> None:
        """A control connection is gone."""

    def on_message(self, conn: ControlLink, message: ControlMessage) -> None:
        """Dispatch one message (the codec checked its fields); one this role does not
        expect ends the connection with one line."""
        handler = self.HANDLERS.get(type(message))
        if handler is None:
            return self._refuse(conn, f"unexpected message type {message.TYPE!r}")
        handler(self, conn, message)

    def clean_shutdown(self, reason: str) -> None:
        """CleanShutdown from the external channel: stop the cluster, draining first."""
        raise NotImplementedError

    def rotate_log(self, worker: str, reply: Reply | None = None) -> None:
        """RotateLog from the external channel: rotate ``worker``'s event log."""
        raise NotImplementedError

    def change_placement(self, placement: Placement, leaving: tuple[str, ...],
                         done: Callable[[], None]) -> None:  # fmt: skip
        """Route by ``placement`` and hand over what this worker no longer owns; ``done()``
        once every handover is acknowledged. A leaving worker says so, as Wallaroo's did."""
        me_leaving = self.node.name in leaving
        handed_over = lambda: self._handed_over(done, me_leaving)  # noqa: E731
        handoffs = self.node.change_placement(placement, handed_over)
        if me_leaving:
            say(f"Migrating all partitions to {len(placement.workers)} remaining workers")
        if not handoffs:
            done()

    @staticmethod
    def _handed_over(done: Callable[[], None], leaving: bool) -> None:
        if leaving:
            say("--Sending leaving worker done migration msg to cluster")
        done()

    def shrink(self, text: str, reply: Reply) -> None:
        """A shrink asked on the external channel (``?``, a count or names)."""
        raise NotImplementedError

    def partition_query(self, text: str, reply: Reply) -> None:
        answer = queries.partitions(self.placement, self.keys)
        reply(external.encode(external.PARTITION_QUERY_RESPONSE, answer))

    def partition_count_query(self, text: str, reply: Reply) -> None:
        answer = queries.partition_counts(self.placement)
        reply(external.encode(external.PARTITION_COUNT_QUERY_RESPONSE, answer))

    def cluster_status_query(self, text: str, reply: Reply) -> None:
        workers = list(self.placement.workers) if self.placement is not None else []
        answer = queries.cluster_status(self.processing, workers)
        reply(external.encode(external.CLUSTER_STATUS_QUERY_RESPONSE, answer))

    @staticmethod
    def _refuse(conn: ControlLink, why: str) -> None:
        warn(f"ERROR: control connection with {conn.peer}: {why}; connection closed")
        conn.close()

    async def finish_shutdown(self, deadline_s: float) -> int:
        """Flush sinks, close, remove recovery files; 0 when everything left, else 1."""
        node = self.node
        if not await node.drain_sinks(deadline_s):
            self._not_drained()
            return 1
        node.close(clean=True)
        say("Connections: Finished shutdown procedure.")
        return 0

    def abort_shutdown(self) -> None:
        self._not_drained()
        self.node.finish(1)

    def _not_drained(self) -> None:
        warn(f"ERROR: clean shutdown could not drain: {self.node.leftovers()}")
