"""What the initializer and a member share: control-message dispatch and the shutdown ending."""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any, Callable, ClassVar

from machida.aio import background
from machida.cluster.node import ControlLink, Node
from machida.console import say, warn
from machida.wire.control import ControlMessage

# machida.md §8.1: a clean shutdown that has not drained by then gives up.
DRAIN_DEADLINE_S = 30.0

Handler = Callable[[Any, ControlLink, Any], None]


class Role:
    """A cluster role steering ``node``: a :class:`~machida.wire.control.ControlHandler`
    whose messages each go to the handler for their type, and the engine behind the
    external channel's requests (:class:`machida.external.ExternalCommands`)."""

    # message class -> handler; a message a role does not handle ends the connection
    HANDLERS: ClassVar[dict[type, Handler]] = {}

    def __init__(self, node: Node) -> None:
        self.node = node
        self.shutting_down = False

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

    def rotate_log(self, worker: str) -> None:
        """RotateLog from the external channel: rotate ``worker``'s event log."""
        raise NotImplementedError

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
