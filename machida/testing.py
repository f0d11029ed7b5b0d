"""Run a machida application in-process: a list goes in, a list comes out.

Wallaroo had no way to test an application without a cluster. This driver
loads the module and builds its plan exactly as the runner does, then runs one
:class:`machida.runtime.dataplane.DataPlane` per simulated worker, the very
object each worker process runs, with keys placed by the runner's rule. The
planes are joined in memory: a message for a key on another simulated worker
crosses in a numbered batch, through the module's ``serialize`` and
``deserialize`` (plain ints as u64s when the pair gives them back unchanged,
as in the runner), and is acknowledged. There are no sockets and no threads,
and each input is carried to completion, on every worker, before the next, so
the output is deterministic.

    >>> from machida.testing import run
    >>> run("sequence_window", [1, 2], workers=2)
    [b'\\x00\\x00\\x00\\t[0,0,0,1]', b'\\x00\\x00\\x00\\t[0,0,0,2]']
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Iterable
from types import ModuleType
from typing import Any, Callable, NamedTuple

from machida.app.callbacks import Callbacks
from machida.app.loader import load_plan, serializers
from machida.app.pipeline import SourceConnection
from machida.errors import UserCallbackError
from machida.runtime.dataplane import DataPlane, Inbound
from machida.runtime.flow import FlowControl

__all__ = ["DEFAULT_ARGS", "Driver", "Output", "UserCallbackError", "run"]

DEFAULT_ARGS = ("machida", "--in", "127.0.0.1:0", "--out", "127.0.0.1:0")
DRIVER_PEER = "in-process driver"


class Output(NamedTuple):
    """One value that reached a sink: who emitted it, what the encoder got and gave."""

    worker: str
    pipeline: int
    value: Any
    data: bytes | None


class Driver:
    """Stepwise in-process runs of one application over simulated workers.

    ``errors="raise"`` turns a failing user callback into :class:`UserCallbackError`
    (naming the callback, chained to the cause); ``errors="log"`` drops and
    counts the message like the runner. One driver is one source connection per
    pipeline, so stateless steps get one instance each.
    """

    def __init__(
        self,
        app: str | ModuleType,
        workers: int = 1,
        args: list[str] | None = None,
        worker_names: list[str] | None = None,
        errors: str = "raise",
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        names = list(worker_names or ["initializer"] + [f"worker{i}" for i in range(1, workers)])
        if len(names) != workers or len(set(names)) != workers:
            raise ValueError(f"need {workers} distinct worker names, got {names!r}")
        self.module, self.plan = load_plan(app, list(args or DEFAULT_ARGS), warn=_warn)
        self.placement = self.plan.placement(names)
        self.outputs: list[Output] = []
        pair = serializers(self.module)
        self._wire: deque[tuple[str, str, bytes]] = deque()  # frames not yet delivered
        self._delivering = False
        self._planes: dict[str, DataPlane] = {}
        for name in names:
            plane = _EagerPlane(self.plan, name, pair, FlowControl(), _no_sink_writes,
                                self._link_from(name), Callbacks(name, errors))  # fmt: skip
            plane.build(names, sink_for=self._sink_for(name), values=True)
            plane.delivered = self._deliver
            self._planes[name] = plane
        self._inbound = {(a, b): Inbound() for a in names for b in names if a != b}
        for a, b in self._inbound:
            self._wire += [(a, b, frame) for frame in self._planes[a].link_opened(b)]
        self._deliver()
        self._initializer = self._planes[names[0]]
        self._sources: dict[int, SourceConnection] = {}

    @property
    def counters(self) -> Counter:
        """Dropped messages keyed by ``(reason, "<Class>.<method>")``, over all workers."""
        total: Counter = Counter()
        for plane in self._planes.values():
            total.update(plane.callbacks.counters)
        return total

    def feed(self, values: Iterable[Any], pipeline: int = 0) -> list[Output]:
        """Push decoded messages into ``pipeline`` (the decoder is skipped)."""
        source = self._source(pipeline)
        start = len(self.outputs)
        for value in values:
            source.push(value)
        return self.outputs[start:]

    def feed_bytes(self, data: bytes | Iterable[bytes], pipeline: int = 0) -> list[Output]:
        """Push raw source bytes; framing state persists across calls."""
        source = self._source(pipeline)
        start = len(self.outputs)
        chunks = [data] if isinstance(data, (bytes, bytearray, memoryview)) else data
        for chunk in chunks:
            if not self._initializer.source_read(source, bytes(chunk)):
                break
        return self.outputs[start:]

    def close(self) -> None:
        """End the simulated source connections; a partial frame is reported."""
        for source in self._sources.values():
            source.close()
        self._sources.clear()

    def state(self, state_name: str, key: Any) -> Any:
        """The live state object of ``key`` (on whichever worker owns it)."""
        index = self._key_index(state_name, key)
        owner = self.placement.owner(state_name, index)
        return self._planes[owner].states[state_name][index]

    def owner(self, state_name: str, key: Any) -> str:
        """The name of the worker that owns ``key`` of ``state_name``."""
        return self.placement.owner(state_name, self._key_index(state_name, key))

    def _key_index(self, state_name: str, key: Any) -> int:
        keys = self.plan.state_keys().get(state_name)
        if keys is None:
            raise KeyError(f"no state named {state_name!r}; states: {list(self.plan.state_keys())}")
        for i, candidate in enumerate(keys):
            if candidate == key:
                return i
        raise KeyError(f"{key!r} is not a key of state {state_name!r}: {list(keys)!r}")

    def _source(self, pipeline: int) -> SourceConnection:
        if not 0 <= pipeline < len(self.plan.pipelines):
            raise IndexError(
                f"pipeline {pipeline} does not exist; the app has {len(self.plan.pipelines)}"
            )
        if pipeline not in self._sources:
            self._sources[pipeline] = self._initializer.open_source(pipeline, DRIVER_PEER)
        return self._sources[pipeline]

    def _sink_for(self, worker: str):
        """Each simulated worker's outputs, recorded in emission order."""

        def sink_for(p: int):
            def out(value: Any, data: bytes | None) -> None:
                self.outputs.append(Output(worker, p, value, data))

            return out

        return sink_for

    def _link_from(self, worker: str):
        """Frames one simulated worker writes for another, kept until delivered."""

        def write_link(peer: str, frame: bytes) -> None:
            self._wire.append((worker, peer, frame))

        return write_link

    def _deliver(self) -> None:
        """After a flush: every frame reaches its worker, which acknowledges it; what that
        worker then sends is delivered too, until nothing is in flight."""
        if self._delivering:
            return  # a flush during delivery: its frames join the queue being delivered
        self._delivering = True
        try:
            while self._wire:
                src, dst, frame = self._wire.popleft()
                inbound = self._inbound[(src, dst)]
                self._planes[dst].boundary_read(inbound, frame)
                if inbound.owes_ack:
                    self._planes[src].link_read(dst, inbound.take_ack())
        finally:
            self._delivering = False


def run(
    app: str | ModuleType,
    inputs: Any,
    workers: int = 1,
    args: list[str] | None = None,
    frames: bool = False,
    pipeline: int = 0,
    errors: str = "raise",
) -> list[bytes]:
    """Run ``inputs`` (values, or raw source bytes with ``frames=True``); return sink bytes."""
    driver = Driver(app, workers=workers, args=args, errors=errors)
    if frames:
        driver.feed_bytes(inputs, pipeline)
        driver.close()
    else:
        driver.feed(inputs, pipeline)
    return [out.data for out in driver.outputs if out.data is not None]


def _warn(line: str) -> None:
    print(line, file=sys.stderr)


class _EagerPlane(DataPlane):
    """A data plane that sends each forwarded message at once, in a batch of its own.

    The runner's plane batches what a read forwards; the driver's sends every
    message as it is forwarded, so that the output order does not depend on
    the number of simulated workers. After each flush the driver delivers
    what it wrote (:attr:`delivered`).
    """

    delivered: Callable[[], None]

    def flush(self) -> None:
        super().flush()
        self.delivered()

    def _outbound(self, owner: str, route: tuple) -> Callable[[Any], None]:
        append = super()._outbound(owner, route)

        def send(msg: Any) -> None:
            append(msg)
            self.flush()

        return send


def _no_sink_writes(p: int, data: bytes) -> None:
    raise AssertionError("the driver records its outputs itself; nothing is buffered for sinks")
