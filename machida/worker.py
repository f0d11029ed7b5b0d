"""One worker process: the cluster role, the message flow, and stopping.

:func:`run` is what ``machida`` calls once its command line is checked. It
loads the application (every process does, as machida did), then runs a
:class:`Worker` on an asyncio loop. The initializer binds the sources and the
control and data listeners, admits the other workers (:mod:`machida.cluster`),
and starts reading its sources once every worker reports ready. Messages flow
through :class:`machida.app.pipeline.LocalTopology`; what it forwards to another
worker goes into that worker's :class:`machida.runtime.links.OutLink`, what it emits
goes into a :class:`machida.runtime.sink.Sink`. Incoming bytes are handled in
:mod:`machida.inputs`. After each socket read the worker flushes: one write
per sink and one batch per link. Backpressure pauses the
sources (and incoming links) while a link has too many unacknowledged
messages or a sink has too many unsent bytes.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import random
import signal
import sys
from array import array
from typing import Any, Callable

from machida.app.callbacks import Callbacks
from machida.app.loader import BUILD_FAILED, load_plan, serializers
from machida.app.pipeline import LocalTopology
from machida.console import say, warn
from machida.durability.eventlog import EventLogError
from machida.durability.recovery import (
    RECOVERING,
    Expectation,
    Recover,
    RecoveryError,
    RecoveryFiles,
    Topology,
    removal_lines,
)
from machida.durability.resilience import Resilience
from machida.errors import ApplicationError
from machida.inputs import Inputs
from machida.metrics.client import MetricsClient
from machida.metrics.stats import Stats
from machida.runtime.links import Conn, OutLink, bound_port, listen
from machida.runtime.sink import Sink
from machida.wire.boundary import U64_MAX, Dedup

# machida.md §6.4: pause sources at 16 384 unacknowledged messages on a link, resume below 8 192.
LINK_HIGH_WATER = 16_384
LINK_LOW_WATER = 8_192
# A pause of the inputs that lasts this long is reported once (an operator should know).
PAUSE_REPORT_S = 1.0
# Allocations between two young-generation collections (CPython's default is 700).
GC_THRESHOLD = 20_000
# How often repeated user-callback failures are summarised on stderr.
SUMMARY_EVERY_S = 10.0
# At exit, tasks still running are cancelled and given this long to end.
END_TASKS_S = 5.0


class Worker(Inputs):
    """The state of one worker process and the flow of its messages."""

    def __init__(self, config: Any, module: Any, plan: Any) -> None:
        self.config = config
        self.name = config.name
        self.plan = plan
        self.callbacks = Callbacks(self.name)
        self.stats = Stats(self.name)
        self.pstats = [self.stats.pipeline(p.name) for p in plan.pipelines]
        self.serializers = serializers(module)
        self.ints_travel_raw = ints_round_trip(self.serializers)
        self.incarnation = random.getrandbits(63)
        self.topology: LocalTopology | None = None
        self.sinks: list[Sink | None] = []
        self._sink_pending: list[list[bytes]] = []
        self._outbox: dict[str, list[tuple[tuple, list]]] = {}
        self.links: dict[str, OutLink] = {}
        self.in_conns: set[Conn] = set()
        self.source_conns: set[Conn] = set()
        self.source_servers: list[asyncio.base_events.Server] = []
        self.servers: list[asyncio.base_events.Server] = []
        self.dedup: dict[str, Dedup] = {}
        self.applied_total = 0
        self.pause_reasons: set[str] = set()
        self._pause_timer: asyncio.TimerHandle | None = None
        self.reading_sources = False
        self.finished: asyncio.Future | None = None
        self.cluster: Any = None  # machida.cluster.Initializer or Member
        self._stopping = False
        self.recovery = RecoveryFiles(
            config.resilience_dir, config.application_module, self.name, config.initializer
        )
        self.recovered: Topology | None = None
        self.bound: dict[str, tuple[str, int]] = {}
        self.say = say
        self.resilience = Resilience(self) if config.resilience else None

    # -- start ------------------------------------------------------------------------------

    def finish(self, code: int) -> None:
        """End the process's main loop with exit status ``code``."""
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(code)

    def open_recovery(self) -> None:
        """Read this worker's recovery files (machida.md §9.2); sets :attr:`recovered`."""
        cfg = self.config
        expected = Expectation(
            fingerprint=self.plan.fingerprint(cfg.resilience),
            resilience=cfg.resilience,
            worker_count=cfg.worker_count if cfg.initializer else None,
        )
        decision = self.recovery.inspect(expected)
        if isinstance(decision, Recover):
            say(RECOVERING)
            self.recovered = decision.topology
        else:
            for line in decision.notices:
                say(line)

    def save_topology(self, workers: list[str], addresses: dict[str, tuple]) -> None:
        """Write the recovery files once the member list is known (both modes)."""
        placement = self.plan.placement(workers)
        peers = {
            name: {"control": tuple(addr[0]), "data": tuple(addr[1])}
            for name, addr in addresses.items()
            if name != self.name
        }
        self.recovery.write(Topology(
            module=self.config.application_module, worker=self.name,
            fingerprint=self.plan.fingerprint(self.config.resilience),
            worker_count=len(workers), workers=tuple(workers),
            owned_keys=placement.owned_by(self.name), resilience=self.config.resilience,
            control=self.bound["control"], data=self.bound.get("data"), peers=peers,
        ))  # fmt: skip

    def remove_recovery_files(self) -> None:
        for line in removal_lines(self.recovery.remove_all()):
            say(line)

    async def bind(self, kind: str, address: tuple[str, int]):
        """Listen on ``address`` (a recorded one when recovering); failure ends with status 1."""
        if self.recovered is not None and kind in ("control", "data"):
            recorded = self.recovered.control if kind == "control" else self.recovered.data
            if recorded is not None:
                address = recorded
                say("Restarting a listener ...")
        try:
            server = await listen(self, kind, *address)
        except OSError as err:
            raise BindError(f"Error: unable to listen on {address[0]}:{address[1]} "
                            f"for {kind}: {err.strerror or err}") from err  # fmt: skip
        self.servers.append(server)
        self.bound[kind] = (address[0], bound_port(server))
        return server

    async def bind_sources(self) -> None:
        for p, pipeline in enumerate(self.plan.pipelines):
            host, port = pipeline.source.host, int(pipeline.source.port)
            try:
                server = await listen(self, f"source:{p}", host, port)
            except OSError as err:
                raise BindError(f"{pipeline.name} source is unable to listen") from err
            self.source_servers.append(server)
            say(f"{pipeline.name} source listening on {host}:{bound_port(server)}")

    async def bind_external(self) -> None:
        if self.config.external is None:
            return
        server = await self.bind("external", self.config.external)
        host = self.config.external[0]
        say(f"{self.name} external: listening on {host}:{bound_port(server)}")

    def build_topology(self, workers: list[str]) -> None:
        """The local topology for a member list in join order: states, sinks, links."""
        placement = self.plan.placement(workers)
        self._sink_pending = [[] for _ in self.plan.pipelines]
        self.topology = LocalTopology(
            self.plan, self.name, placement, self.callbacks,
            sink_for=lambda p: self._sink_pending[p].append, forward_to=self._outbound,
            serializers=self.serializers, stats=self.stats,
            persist=self.resilience.persist if self.resilience else None,
        )  # fmt: skip
        if self.resilience is not None:
            try:
                self.resilience.open(recovering=self.recovered is not None)
            except EventLogError as err:
                warn(str(err))
                self.finish(1)
        for pipeline in self.plan.pipelines:
            if pipeline.sink is None:
                self.sinks.append(None)
                continue
            sink = Sink(pipeline.sink.host, int(pipeline.sink.port), self._sink_blocked, say)
            sink.start()
            self.sinks.append(sink)
        if not self.pause_reasons:  # links that connected early were held until now
            for conn in self.in_conns:
                conn.resume()

    async def sinks_connected(self) -> None:
        for sink in self.sinks:
            if sink is not None:
                await sink.connected.wait()

    def connect_link(self, peer: str, host: str, port: int) -> None:
        link = self.links.get(peer)
        if link is None:
            link = OutLink(peer, host, port, self.name, self.incarnation, self._acked, warn)
            self.links[peer] = link
            link.start()
        else:
            link.retarget(host, port)

    # -- the message flow -----------------------------------------------------------------

    def _outbound(self, owner: str, route: tuple) -> Callable[[Any], None]:
        """Where the topology puts messages for ``route`` on ``owner``: a list, until flush."""
        pending: list = []
        self._outbox.setdefault(owner, []).append((route, pending))
        return pending.append

    def flush(self) -> None:
        """After a batch: one write per sink, one batch per link, then check backpressure."""
        for p, pending in enumerate(self._sink_pending):
            if pending:
                self.pstats[p].messages_out += len(pending)
                self.sinks[p].write(b"".join(pending))
                pending.clear()
        for owner, routes in self._outbox.items():
            link = self.links[owner]
            for route, pending in routes:
                if pending:
                    self._queue_run(link, route, pending)
                    pending.clear()
            link.flush()
            if link.backlog.unacked >= LINK_HIGH_WATER:
                self.pause(f"link:{link.peer}")
        if self.resilience is not None:
            self.resilience.commit()  # before any acknowledgement of this batch

    def _queue_run(self, link: OutLink, route: tuple, messages: list) -> None:
        """Messages for one key of another worker: as u64s when they are plain ints."""
        self.pstats[route[0]].messages_forwarded += len(messages)
        if self.ints_travel_raw and set(map(type, messages)) == {int}:
            try:
                link.backlog.add(route, True, array("Q", messages))
                return
            except OverflowError:
                pass  # some int outside 0..2**64-1: serialise them all
        hop_out, p = self.topology.hop_out, route[0]
        data = [d for d in map(hop_out, messages, [p] * len(messages)) if d is not None]
        self.pstats[p].messages_forwarded -= len(messages) - len(data)
        if data:
            link.backlog.add(route, False, data)

    def _acked(self) -> None:
        for link in self.links.values():
            if link.backlog.unacked < LINK_LOW_WATER:
                self.resume(f"link:{link.peer}")

    def _sink_blocked(self, blocked: bool) -> None:
        (self.pause if blocked else self.resume)("sink")

    def pause(self, reason: str) -> None:
        if reason not in self.pause_reasons:
            self.pause_reasons.add(reason)
            if len(self.pause_reasons) == 1:
                for conn in (*self.source_conns, *self.in_conns):
                    conn.pause()
                self._pause_timer = asyncio.get_running_loop().call_later(
                    PAUSE_REPORT_S, self._report_pause
                )

    def _report_pause(self) -> None:
        reasons = ", ".join(sorted(self.pause_reasons))
        warn(f"WARNING: {self.name} has paused its inputs for over {PAUSE_REPORT_S:g} s "
             f"(backpressure: {reasons})")  # fmt: skip

    def resume(self, reason: str) -> None:
        if reason in self.pause_reasons:
            self.pause_reasons.discard(reason)
            if not self.pause_reasons:
                if self._pause_timer is not None:
                    self._pause_timer.cancel()
                    self._pause_timer = None
                if self.topology is not None:
                    for conn in self.in_conns:
                        conn.resume()
                if self.reading_sources:
                    for conn in self.source_conns:
                        conn.resume()

    def start_sources(self) -> None:
        """The cluster is ready: read the source connections (held until now)."""
        self.reading_sources = True
        if not self.pause_reasons:
            for conn in self.source_conns:
                conn.resume()

    # -- counts and stopping --------------------------------------------------------------

    def counts(self) -> dict:
        """What the initializer compares to know that nothing is in flight."""
        return {
            "sent": sum(link.backlog.sent_total for link in self.links.values()),
            "applied": self.applied_total,
            "backlog": sum(link.backlog.unacked for link in self.links.values()),
        }

    def leftovers(self) -> str:
        sending = len(self.source_conns)
        parts = [f"{sending} source connection(s) still sending"] if sending else []
        parts += [f"{link.backlog.unacked} unacknowledged message(s) for {link.peer}"
                 for link in self.links.values() if link.backlog.unacked]  # fmt: skip
        parts += [f"{sink.buffered} byte(s) unsent to sink {sink.address}"
                  for sink in self.sinks if sink is not None and sink.buffered]  # fmt: skip
        return ", ".join(parts) or "nothing"

    async def drain_sinks(self, seconds: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        results = [await s.drain(deadline) for s in self.sinks if s is not None]
        return all(results)

    def quiet_links(self) -> None:
        """The cluster is stopping: links that drop now are neither reported nor redialled."""
        for link in self.links.values():
            link.closing = True

    def close_everything(self) -> None:
        for server in (*self.source_servers, *self.servers):
            server.close()
        for conn in (*self.source_conns, *self.in_conns):
            conn.close()
        for link in self.links.values():
            link.close()
        for sink in self.sinks:
            if sink is not None:
                sink.close()
        if self.resilience is not None:
            self.resilience.close()

    def on_signal(self) -> None:
        """SIGTERM/SIGINT: stop this process only, keeping its recovery files."""
        if self._stopping:
            os._exit(0)  # a second signal forces the exit
        self._stopping = True
        asyncio.get_running_loop().create_task(self._stop_on_signal())

    async def _stop_on_signal(self) -> None:
        self.reading_sources = False
        for conn in self.source_conns:
            conn.pause()
        await self.drain_sinks(1.0)
        self.finish(0)


def ints_round_trip(pair: tuple) -> bool:
    """Whether plain ints may cross workers as u64s: the module's pair gives them back as is.

    machida serialised every message; sending an int as 8 bytes is only allowed
    when the result is identical, which a few probes of the pair confirm.
    """
    serialize, deserialize = pair
    try:
        return all(
            (back := deserialize(serialize(v))) == v and back.__class__ is int
            for v in (0, 1, 12, 2**32 + 5, 2**63, U64_MAX)
        )
    except Exception:
        return False


class BindError(Exception):
    """A listener could not be bound; the message is the line to print."""


async def _main(config: Any, module: Any, plan: Any) -> int:
    from machida.cluster import start_cluster

    worker = Worker(config, module, plan)
    loop = asyncio.get_running_loop()
    worker.finished = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, worker.on_signal)
    summary = loop.create_task(_summaries(worker))
    metrics = MetricsClient(*config.metrics, worker.stats)
    metrics.start()
    try:
        worker.open_recovery()
        await start_cluster(worker)
    except (BindError, RecoveryError) as err:
        warn(str(err))
        worker.close_everything()
        await metrics.stop()
        return 1
    code = await worker.finished
    summary.cancel()
    await metrics.stop()
    worker.callbacks.summarise(force=True)
    worker.close_everything()
    await asyncio.sleep(0)  # let transports run their close callbacks
    return code


async def _summaries(worker: Worker) -> None:
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        worker.callbacks.summarise()


def run(config: Any) -> int:
    """Run one worker process to its end; returns the exit status."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)
    for line in config.notices:
        warn(line)
    if config.resilience:
        for line in Resilience.banners(config):
            say(line)
    try:
        module, plan = load_plan(config.application_module, list(config.app_args), warn=warn)
    except ApplicationError as err:
        text = str(err)
        warn(text if text.startswith("Error:") or "\n" in text else f"Error: {text}")
        if "Could not load module" not in text:
            warn(BUILD_FAILED)
        return 1
    # The application's objects and the runner's live for the whole run: keep the
    # cyclic collector from scanning them again and again, and let it run less
    # often (messages make short-lived lists and tuples, freed by refcounting).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(config, module, plan))
    except KeyboardInterrupt:
        return 0
    finally:
        close_loop(loop)


def close_loop(loop: asyncio.AbstractEventLoop, grace_s: float = END_TASKS_S) -> None:
    """Cancel the loop's remaining tasks, wait up to ``grace_s`` for them, and close it.

    Unlike ``asyncio.run``, a task that ignores its cancellation cannot keep the
    process alive after the worker has finished: it is named on stderr and left.
    """
    pending = [task for task in asyncio.all_tasks(loop) if not task.done()]
    for task in pending:
        task.cancel()
    if pending:
        _, stuck = loop.run_until_complete(asyncio.wait(pending, timeout=grace_s))
        if stuck:
            names = ", ".join(sorted(task.get_coro().__qualname__ for task in stuck))
            warn(f"WARNING: exiting although {len(stuck)} task(s) did not stop: {names}")
    loop.run_until_complete(loop.shutdown_asyncgens())
    asyncio.set_event_loop(None)
    loop.close()
