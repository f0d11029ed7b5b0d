"""Run a machida application in-process: a list goes in, a list comes out.

Wallaroo had no way to test an application without a cluster. This driver
loads the module and builds its plan exactly as the runner does, then runs one
:class:`machida.runtime.dataplane.DataPlane` per simulated worker, the very
object each worker process runs, with keys placed by the runner's rule. The
planes are joined by a :class:`MemoryNetwork`: a message for a key on another
simulated worker crosses in a numbered batch, through the module's
``serialize`` and ``deserialize`` (plain ints as u64s when the pair gives them
back unchanged, as in the runner), and is acknowledged. There are no sockets
and no threads, and each input is carried to completion, on every worker,
before the next, so the output is deterministic. :class:`MemoryNetwork` is
public: a test can join planes itself and decide when each frame arrives.

    >>> from machida.testing import run
    >>> run("sequence_window", [1, 2], workers=2)
    [b'\\x00\\x00\\x00\\t[0,0,0,1]', b'\\x00\\x00\\x00\\t[0,0,0,2]']
"""

from __future__ import annotations

import sys
from collections import Counter, deque
from collections.abc import Iterable
from types import ModuleType
from typing import Any, NamedTuple

from machida.app.callbacks import Callbacks
from machida.app.loader import load_plan, serializers
from machida.app.plan import Placement
from machida.app.topology import SourceConnection
from machida.errors import FrameError, UserCallbackError
from machida.runtime.dataplane import DataPlane, WriteBoundary
from machida.runtime.flow import FlowControl
from machida.wire.boundary import IncomingBoundary

__all__ = ["DEFAULT_ARGS", "Driver", "MemoryNetwork", "Output", "UserCallbackError", "run"]

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
    pipeline, so stateless steps get one instance each. ``state_off_initializer``
    places the keys as machida's ``--state-off-initializer`` does.
    """

    def __init__(
        self,
        app: str | ModuleType,
        workers: int = 1,
        args: list[str] | None = None,
        worker_names: list[str] | None = None,
        errors: str = "raise",
        state_off_initializer: bool = False,
    ) -> None:
        if workers < 1:
            raise ValueError(f"workers must be at least 1, got {workers!r}")
        names = list(worker_names or ["initializer"] + [f"worker{i}" for i in range(1, workers)])
        if len(names) != workers or len(set(names)) != workers:
            raise ValueError(f"need {workers} distinct worker names, got {names!r}")
        self.module, self.plan = load_plan(app, list(args or DEFAULT_ARGS), warn=_warn)
        self.placement = self.plan.placement(names, state_off_initializer)
        self.outputs: list[Output] = []
        self._errors = errors
        # every forwarded message crosses at once, in a batch of its own, and is delivered
        # before the next step runs: the output order does not depend on the worker count
        self.network = MemoryNetwork(deliver_at_once=True)
        self._planes: dict[str, DataPlane] = {}
        for name in names:
            self._start(name, self.placement)
        self.network.connect_all()
        self._initializer = self._planes[names[0]]
        self._sources: dict[int, SourceConnection] = {}

    def _start(self, name: str, placement: Placement) -> None:
        write, callbacks = self.network.writer(name), Callbacks(name, self._errors)
        plane = DataPlane(self.plan, name, serializers(self.module), FlowControl(),
                          _no_sink_writes, write, callbacks, eager=True)  # fmt: skip
        plane.build(placement, sink_for=self._sink_for(name), values=True)
        self._planes[name] = self.network.add(plane)

    @property
    def workers(self) -> list[str]:
        """The simulated workers, in join order (the initializer first)."""
        return list(self.placement.workers)

    def grow(self, names: list[str]) -> list[tuple[str, Any, str, str]]:
        """New simulated workers join, as ``machida --join`` makes them: the keys rebalance
        by the runner's rule, and each moving key's state is handed over through the module's
        ``serialize``/``deserialize``. Returns the moves: ``(state, key, from, to)``."""
        taken = [n for n in names if n in self._planes]
        if taken or len(set(names)) != len(names) or not names:
            raise ValueError(f"need new, distinct worker names, got {names!r}")
        target = self.placement.rebalanced([*self.placement.workers, *names])
        for name in names:
            self._start(name, target)
        for name in names:
            for other in self._planes:
                if other != name:
                    self.network.connect(name, other)
                    self.network.connect(other, name)
        return self._move(target)

    def shrink(self, names: list[str]) -> list[tuple[str, Any, str, str]]:
        """Simulated workers leave, as ``cluster_shrinker --workers`` makes them: their keys
        are handed over to the others (the initializer cannot leave: it has the sources).
        Returns the moves: ``(state, key, from, to)``."""
        workers = self.workers
        if not names or workers[0] in names or not set(names) <= set(workers):
            raise ValueError(f"can only remove workers other than {workers[0]!r}, got {names!r}")
        moves = self._move(self.placement.rebalanced([w for w in workers if w not in names]))
        for name in names:
            del self._planes[name]
            self.network.remove(name)
            for plane in self._planes.values():
                plane.forget(name)
        return moves

    def _move(self, target: Placement) -> list[tuple[str, Any, str, str]]:
        """Every plane routes by ``target`` and hands over what it no longer owns; the memory
        network delivers the states (and their acknowledgements) as they are sent."""
        moves = self.placement.moves(target)
        keys = self.plan.state_keys()
        for plane in list(self._planes.values()):
            plane.change_placement(target)
        assert not any(plane.handing_over for plane in self._planes.values())
        self.placement = target
        for plane in self._planes.values():
            plane.build_missing()
        return [(name, keys[name][i], old, new) for name, i, old, new in moves]

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


def _no_sink_writes(p: int, data: bytes) -> None:
    raise AssertionError("the driver records its outputs itself; nothing is buffered for sinks")


class MemoryNetwork:
    """Data planes joined in memory, as their worker processes are joined by sockets.

    Each direction between two planes is a connection whose frames wait on
    :attr:`wire` until delivered. :meth:`add` a plane whose ``write_boundary``
    is :meth:`writer` of its name; :meth:`connect` (re)opens the connection from
    one plane to another (what was in flight on it is lost, as when a socket
    drops, and the sender writes its hello and backlog again); :meth:`deliver`
    carries frames to their receivers, which acknowledge them unless told not
    to. With ``deliver_at_once``, every write is delivered as it is made (what
    :class:`Driver` uses); otherwise a test decides when each frame arrives.
    A frame a receiver refuses raises :class:`~machida.errors.FrameError`:
    between planes of one application that is a bug.
    """

    def __init__(self, deliver_at_once: bool = False) -> None:
        self.planes: dict[str, DataPlane] = {}
        self.wire: deque[tuple[str, str, bytes]] = deque()  # (from, to, frame), in write order
        self.incoming: dict[tuple[str, str], IncomingBoundary] = {}
        self._at_once = deliver_at_once
        self._delivering = False

    def writer(self, name: str) -> WriteBoundary:
        """The ``write_boundary`` of the plane called ``name``."""

        def write(peer: str, frame: bytes) -> None:
            self.wire.append((name, peer, frame))
            if self._at_once:
                self.deliver()

        return write

    def add(self, plane: DataPlane) -> DataPlane:
        """Join ``plane`` (replacing one of the same name: a restarted worker)."""
        self.planes[plane.name] = plane
        return plane

    def remove(self, name: str) -> None:
        """The plane ``name`` has left: its connections and what they carried are gone."""
        del self.planes[name]
        self.wire = deque(w for w in self.wire if name not in w[:2])
        self.incoming = {ends: end for ends, end in self.incoming.items() if name not in ends}

    def connect(self, src: str, dst: str) -> None:
        """A (re)connection from ``src`` to ``dst``: what was in flight on it is lost, the
        receiver has a fresh end, and the sender writes its first frames again."""
        self.wire = deque(w for w in self.wire if w[:2] != (src, dst))
        self.incoming[(src, dst)] = IncomingBoundary()
        self.wire += [(src, dst, frame) for frame in self.planes[src].boundary_opened(dst)]
        if self._at_once:
            self.deliver()

    def connect_all(self) -> None:
        """Connect every plane to every other one."""
        for src in self.planes:
            for dst in self.planes:
                if src != dst:
                    self.connect(src, dst)

    def _next(self, link: tuple[str, str] | None) -> tuple[str, str, bytes] | None:
        """The oldest frame on the wire (of ``link``, if given), taken off it."""
        if link is None:
            return self.wire.popleft() if self.wire else None
        for i, waiting in enumerate(self.wire):
            if waiting[:2] == link:
                del self.wire[i]
                return waiting
        return None

    def links(self) -> list[tuple[str, str]]:
        """The connections with frames waiting, ``(from, to)``, in the order of their oldest."""
        return list(dict.fromkeys(w[:2] for w in self.wire))

    def deliver(self, ack: bool = True, frames: int | None = None,
                link: tuple[str, str] | None = None) -> int:  # fmt: skip
        """Carry frames to their receivers, oldest first, until the wire is empty (what the
        receivers send meanwhile included), or ``frames`` of them; only those of ``link``
        ``(from, to)`` if given (each connection keeps its order, as TCP does). Each receiver
        acknowledges what it applied unless ``ack`` is false. Returns how many frames were
        delivered."""
        if self._delivering:
            return 0  # a write during delivery: it joins the wire being delivered
        self._delivering = True
        done = 0
        try:
            while frames is None or done < frames:
                found = self._next(link)
                if found is None:
                    break
                src, dst, frame = found
                incoming = self.incoming[(src, dst)]
                error = self.planes[dst].boundary_read(incoming, frame)
                if error is not None:
                    raise FrameError(f"{dst} refused a frame from {src}: {error}")
                if ack and incoming.owes_ack:
                    error = self.planes[src].ack_read(dst, incoming.take_ack())
                    if error is not None:
                        raise FrameError(f"{src} refused an acknowledgement from {dst}: {error}")
                done += 1
        finally:
            self._delivering = False
        return done
