"""One worker process: the shell around the data plane, and the worker its cluster role steers.

:func:`run` is what ``machida`` calls once its command line is checked. It
loads the application (every process does, as machida did) and runs a
:class:`Process` on an asyncio loop: the event loop, the signals, the
listeners, the sink and data-link connections, the metrics client and the
recovery files are here, and nowhere else. Messages are handled by the
:class:`~machida.runtime.dataplane.DataPlane` (no I/O), which this shell
feeds through the per-channel protocols of :mod:`machida.runtime.channels` and
:mod:`machida.runtime.boundary`; :class:`~machida.runtime.flow.FlowControl`
says which inputs may be read. The cluster role (:mod:`machida.cluster`) steers
the process through the verbs of :class:`machida.cluster.node.Node`. This
module sits above both the runtime and the control plane, which know nothing
of each other.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import sys
from typing import Any, Callable

from machida.aio import Address, background, close_loop
from machida.app.callbacks import Callbacks
from machida.app.loader import load_plan, report_load_failure, serializers
from machida.app.plan import AppPlan, Placement
from machida.cluster.initializer import Initializer
from machida.cluster.member import Member
from machida.cluster.node import Record
from machida.cluster.secret import SecretError, cluster_secret
from machida.config import RunnerConfig
from machida.console import error_line, os_reason, say, warn
from machida.durability.eventlog import EventLogError
from machida.durability.recovery import (
    RECOVERING,
    Expectation,
    Peer,
    Recover,
    RecoveryError,
    RecoveryFiles,
    RecoveryRecord,
    removal_lines,
)
from machida.durability.resilience import Resilience, Settings, banners
from machida.errors import ApplicationError, BindError
from machida.external import ExternalCommands, serve_external
from machida.metrics.client import MetricsClient
from machida.metrics.stats import Stats
from machida.runtime.boundary import Boundaries, BoundaryIn
from machida.runtime.channels import ControlChannel, Inputs, SourceChannel
from machida.runtime.dataplane import DataPlane
from machida.runtime.flow import FlowControl
from machida.runtime.guard import dial_control, guarded
from machida.runtime.listeners import Listeners, local_address_towards
from machida.runtime.sink import Sinks
from machida.wire.control import ControlHandler

# Allocations between two young-generation collections (CPython's default is 700).
GC_THRESHOLD = 20_000
# How often repeated user-callback failures are summarised on stderr.
SUMMARY_EVERY_S = 10.0


class Process:
    """One worker process; implements :class:`machida.cluster.node.Node` for its role."""

    def __init__(self, config: RunnerConfig, module: Any, plan: AppPlan, secret: bytes) -> None:
        self.config, self.name, self.plan = config, config.name, plan
        self.secret = secret
        self.stats = Stats(self.name)
        self.flow = FlowControl(self._flow_changed)
        self.inputs = Inputs(self.flow, self.name)
        self.sinks = Sinks(plan, self.flow.sink_blocked)
        fingerprint = plan.fingerprint(config.resilience, config.exactly_once)
        self.recovery = RecoveryFiles(config.resilience_dir, config.application_module,
                                      self.name, config.initializer)  # fmt: skip
        self.resilience: Resilience | None = None
        if config.resilience:
            settings = Settings.of(config, fingerprint)
            self.resilience = Resilience(settings, self.recovery, self.flow)
        resilience = self.resilience
        self.plane = DataPlane(
            plan, self.name, serializers(module), self.flow, self.sinks.write,
            self._write_boundary, Callbacks(self.name), self.stats,
            persist=resilience.persist if resilience else None,
            commit=self._commit if resilience else None, handed_over=self._handed_over,
            exactly_once=config.exactly_once,
        )  # fmt: skip
        if config.exactly_once:
            self.sinks.exactly_once = self.plane
        self._handover_done: Callable[[], None] | None = None
        self.boundaries = Boundaries(self.plane, secret)
        self.listeners = Listeners()
        self.recovered: RecoveryRecord | None = None
        self.role: Initializer | Member
        keys = plan.state_keys()
        if config.initializer:
            pause = config.stop_pause_ns / 1e9
            self.role = Initializer(self, config.worker_count, keys, pause,
                                    config.state_off_initializer)  # fmt: skip
        else:
            contact = config.join or config.control
            assert contact is not None  # a worker is given the initializer's or a worker's
            dial = functools.partial(dial_control, secret)
            self.role = Member(self, contact, dial, keys, config.worker_count)
        self.finished: asyncio.Future | None = None
        self.disk_failed = False
        self._stopping = False

    # -- starting -------------------------------------------------------------------------

    def open_recovery(self) -> None:
        """Read this worker's recovery files (machida.md §9.2); sets :attr:`recovered`."""
        decision = self.recovery.inspect(_expectation(self.config, self.plan))
        if isinstance(decision, Recover):
            say(RECOVERING)
            self.recovered = decision.record
        else:
            for line in decision.notices:
                say(line)

    @property
    def running(self) -> bool:
        return self.finished is not None and not self.finished.done()

    def fingerprint_parts(self) -> list[str]:
        return self.plan.fingerprint_parts(self.config.resilience, self.config.exactly_once)

    async def listen(self, accepting: ControlHandler,
                     commands: ExternalCommands) -> tuple[Address, Address]:  # fmt: skip
        cfg, listeners, recorded = self.config, self.listeners, self.recovered
        if cfg.initializer:
            for p, pipeline in enumerate(self.plan.pipelines):
                address = (pipeline.source.host, int(pipeline.source.port))
                factory = functools.partial(SourceChannel, self.plane, self.inputs, p)
                await listeners.bind_source(pipeline.name, address, factory)
        control, data = _cluster_addresses(cfg)
        talk = functools.partial(ControlChannel, accepting)
        secret, boundary = self.secret, functools.partial(BoundaryIn, self.plane, self.inputs,
                                                          self.sinks.busy)  # fmt: skip
        control = await listeners.bind("control", control, guarded(secret, b"control", talk),
                                       recorded.control if recorded else None)  # fmt: skip
        data = await listeners.bind("data", data, guarded(secret, b"data", boundary),
                                    recorded.data if recorded else None)  # fmt: skip
        if cfg.external is not None:  # its requests go to the cluster role
            listeners.keep(await serve_external(commands, self.name, cfg.external))
        return control, data

    def build(self, placement: Placement) -> bool:
        """The local topology for a placement of the keys, its event log and sinks."""
        try:
            self.plane.build(placement)
        except ApplicationError as err:  # a state builder raised
            warn(error_line(err))
            self.finish(1)
            return False
        if self.resilience is not None:
            try:
                self.resilience.open(self.plane, recovering=self.recovered is not None)
            except EventLogError as err:
                warn(error_line(err))
                self.finish(1)
                return False
            except OSError as err:
                self._disk_failed(err.filename or self.config.resilience_dir, err)
                return False
        self.sinks.start()
        return True

    def save_record(self, record: Record) -> None:
        bound = self.listeners.bound
        try:
            self.recovery.write(_record(self.config, self.plan, record, bound))
        except OSError as err:
            self._disk_failed(err.filename or self.recovery.directory, err)

    def connect(self, peer: str, data: Address) -> None:
        self.boundaries.connect(peer, *data)

    # -- growing and shrinking ------------------------------------------------------------

    def change_placement(self, placement: Placement,
                         done: Callable[[], None]) -> list[tuple[str, int, str]]:  # fmt: skip
        self._handover_done = done
        return self.plane.change_placement(placement)

    def _handed_over(self, keys: list[tuple[str, int]]) -> None:
        """Every state handed over is acknowledged by its new owner: forget them here (in the
        event log first), then tell the role."""
        if self.resilience is not None:
            try:
                self.resilience.release(keys)
            except (OSError, EventLogError) as err:
                self._disk_failed(self.resilience.log.path if self.resilience.log else "", err)
                return
        done, self._handover_done = self._handover_done, None
        if done is not None:
            done()

    def resume_placement(self) -> None:
        self.plane.build_missing()

    def forget(self, peer: str) -> None:
        self.boundaries.forget(peer)
        self.plane.forget(peer)

    def hold_sources(self, held: bool) -> None:
        self.flow.open_sources(not held)

    async def sinks_connected(self) -> None:
        await self.sinks.connected()

    def start_sources(self) -> None:
        self.flow.open_sources()

    def recovery_complete(self) -> None:
        """Once a recovering worker is back in the cluster (resilience mode), say so once."""
        if self.recovered is not None and self.resilience is not None:
            say("|~~ - Recovery COMPLETE - ~~|")
            self.recovered = None

    # -- the flow of messages -------------------------------------------------------------

    def _flow_changed(self, flow: FlowControl) -> None:
        self.inputs.changed()

    def _write_boundary(self, peer: str, frame: bytes) -> None:
        self.boundaries.write(peer, frame)

    def flush(self) -> None:
        self.plane.flush()

    def _commit(self, leaving: list, outputs: list) -> bool:
        """The data plane's commit: the event log, durable before anything leaves. A disk that
        refuses stops this worker, without acknowledging what it could not log."""
        resilience = self.resilience
        assert resilience is not None and resilience.log is not None  # the hook of an open log
        try:
            resilience.commit(leaving, outputs)
        except (OSError, EventLogError) as err:
            self._disk_failed(resilience.log.path, err)
            return False
        return True

    def _disk_failed(self, path: str, err: Exception) -> None:
        if self.disk_failed:
            return
        self.disk_failed = True
        why = os_reason(err) if isinstance(err, OSError) else str(err)
        warn(
            f"ERROR: cannot write {path}: {why}; {self.name} stops, without acknowledging what "
            f"it could not log (make room, then start it again with the same command)"
        )
        self.flow.pause("disk")
        self.finish(1)

    def counts(self) -> dict[str, int]:
        return self.plane.counts()

    def rotate_log(self) -> None:
        """RotateLog for this worker. Event logs exist only with resilience."""
        if self.resilience is None:
            say("WARNING: LogRotation requested, but log_rotation is off!")
        else:
            self.resilience.request_rotation()

    # -- stopping -------------------------------------------------------------------------

    def stop_sources(self) -> None:
        self.flow.open_sources(False)
        self.listeners.stop_sources()
        self.inputs.close_sources()

    def leftovers(self) -> str:
        sending = len(self.inputs.sources)
        parts = [f"{sending} source connection(s) still sending"] if sending else []
        parts += [*self.plane.leftovers(), *self.sinks.leftovers()]
        return ", ".join(parts) or "nothing"

    async def drain_sinks(self, seconds: float) -> bool:
        return await self.sinks.drain(seconds)

    def quiet_links(self) -> None:
        self.boundaries.quiet()

    def close(self, clean: bool = False) -> None:
        """Close every listener and connection; a clean close removes the recovery files."""
        self.listeners.close()
        self.inputs.close()
        self.boundaries.close()
        self.sinks.close()
        if self.resilience is not None:
            self.resilience.close()
        if clean and not self.disk_failed:  # files a failed write left incomplete are kept
            for line in removal_lines(self.recovery.remove_all()):
                say(line)

    def finish(self, code: int) -> None:
        """End the process's main loop with exit status ``code``."""
        if self.finished is not None and not self.finished.done():
            self.finished.set_result(code)

    def on_signal(self) -> None:
        """SIGTERM/SIGINT: stop this process only, keeping its recovery files."""
        if self._stopping:
            os._exit(0)  # a second signal forces the exit
        self._stopping = True
        background(self._stop_on_signal(), lambda: self.finish(1))

    async def _stop_on_signal(self) -> None:
        self.flow.open_sources(False)
        await self.sinks.drain(1.0)
        self.finish(0)


def _cluster_addresses(config: RunnerConfig) -> tuple[Address, Address]:
    """Where this worker's control and data listeners go: as given; on a worker, by default the
    local address that reaches the initializer (any port), never every interface."""
    if config.initializer:
        assert config.data is not None  # the command line requires it
        return config.control or ("127.0.0.1", 0), config.data
    towards = config.join or config.control
    assert towards is not None  # the command line requires one
    here = local_address_towards(*towards)
    return config.my_control or (here, 0), config.my_data or (here, 0)


def _expectation(config: RunnerConfig, plan: AppPlan) -> Expectation:
    # not the worker count: a cluster restarted with another one grows or shrinks to it
    return Expectation(fingerprint=plan.fingerprint(config.resilience, config.exactly_once),
                       resilience=config.resilience, exactly_once=config.exactly_once)  # fmt: skip


def _record(config: RunnerConfig, plan: AppPlan, record: Record,
            bound: dict[str, Address]) -> RecoveryRecord:  # fmt: skip
    """The recovery files' record of this worker, from what its role knows of the cluster."""
    peers = tuple(Peer(name, control, data) for name, (control, data) in record.addresses.items()
                  if name != config.name)  # fmt: skip
    owned = (record.target or record.placement).owned_by(config.name)
    return RecoveryRecord(
        module=config.application_module, worker=config.name,
        fingerprint=plan.fingerprint(config.resilience, config.exactly_once),
        worker_count=len(record.workers), workers=tuple(record.workers),
        owned_keys=tuple((state, tuple(keys)) for state, keys in owned.items()),
        resilience=config.resilience,
        control=bound["control"], data=bound.get("data"), peers=peers,
        placement=record.placement, target=record.target, leaving=record.leaving,
        requested_count=record.requested_count, exactly_once=config.exactly_once,
    )  # fmt: skip


async def _main(config: RunnerConfig, module: Any, plan: AppPlan, secret: bytes) -> int:
    process = Process(config, module, plan, secret)
    loop = asyncio.get_running_loop()
    process.finished = loop.create_future()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, process.on_signal)
    callbacks = process.plane.callbacks
    summary = loop.create_task(_summaries(callbacks))
    metrics = MetricsClient(*config.metrics, process.stats)
    metrics.start()
    try:
        process.open_recovery()
        await process.role.start()
    except (BindError, RecoveryError) as err:
        warn(error_line(err))
        process.close()
        await metrics.stop()
        return 1
    code = await process.finished
    summary.cancel()
    await metrics.stop()
    callbacks.summarise(force=True)
    process.close()
    await asyncio.sleep(0)  # let transports run their close callbacks
    return code


async def _summaries(callbacks: Callbacks) -> None:
    while True:
        await asyncio.sleep(SUMMARY_EVERY_S)
        callbacks.summarise()


def run(config: RunnerConfig) -> int:
    """Run one worker process to its end; returns the exit status."""
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    for line in config.notices:
        warn(line)
    if config.resilience:
        for line in banners(config):
            say(line)
    try:
        module, plan = load_plan(config.application_module, list(config.app_args), warn=warn)
    except ApplicationError as err:
        report_load_failure(err, warn)
        return 1
    try:
        secret = cluster_secret(config.cluster_secret_file)
    except SecretError as err:
        warn(error_line(err))
        return 1
    # The application's objects and the runner's live for the whole run: keep the
    # cyclic collector from scanning them again and again, and let it run less
    # often (messages make short-lived lists and tuples, freed by refcounting).
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        return loop.run_until_complete(_main(config, module, plan, secret))
    except KeyboardInterrupt:
        return 0
    finally:
        close_loop(loop)
