"""One machida-flink process: the ingress and external channel here, the run's jobs in Flink.

The asyncio loop of this process owns the sockets (sources, the ingress's
serve port, ``--external``); threads own everything that talks to the JVM
(:mod:`machida_flink.jobs`), because PyFlink's calls block. A run begins fresh,
resumed after a crash, or from a savepoint (:mod:`machida_flink.start`), and
goes through one or more jobs: a rescale stops the job with a savepoint and
submits the next one from it at the new parallelism, while the ingress goes on
accepting and recording. Console lines follow machida's where they mean the
same thing: ``<pipeline> source listening on``, ``Application has successfully
initialized.`` once the first job's readers have subscribed to every stream,
``RESILIENCE: <pipeline> source had accepted N record(s)`` when a run is
resumed, and on ``cluster_shutdown`` the clean-shutdown lines, after the job
has drained and finished. A first SIGTERM or SIGINT drains the same way; a
second one exits at once with status 1, leaving the run's files for the same
command to resume.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import Callable

from machida.aio import wait_event
from machida.app.plan import AppPlan
from machida.console import error_line, os_reason, say, warn
from machida.errors import BindError
from machida.external import Reply, serve_external
from machida_flink import rest
from machida_flink.files import RunFiles, RunLocked, remove
from machida_flink.ingress import Ingress
from machida_flink.jobs import TERMINAL, FlinkClient, JobHandle, first_line, still_running
from machida_flink.options import MAX_PARALLELISM, FlinkConfig
from machida_flink.restore import (
    RESCALES,
    SAVEPOINT_INFO,
    Identity,
    KeyTable,
    RestoreError,
    RunRecord,
    SavepointInfo,
)
from machida_flink.start import Start, plan_start
from machida_flink.stream import Base, base_path
from machida_flink.translate import shape

READY = "Application has successfully initialized."
# A clean shutdown waits this long for the job to finish, plus two checkpoint
# intervals (a finishing Flink job takes one last checkpoint).
DRAIN_S = 30.0
# A forced exit (second signal) waits this long for a session cluster to take the cancel.
FORCE_CANCEL_S = 3.0
# A savepoint needs every task of the job running; a rescale waits this long for the job's
# first completed checkpoint, which shows they are.
SETTLE_S = 60.0
# A resumed run waits this long for what the previous one left running to go.
PREVIOUS_S = 30.0
POLL_S = 0.05


class FlinkRunner:
    def __init__(self, config: FlinkConfig, module: ModuleType, plan: AppPlan) -> None:
        self.config = config
        self.module = module
        self.plan = plan
        self.shape = shape(plan)
        self.identity = Identity.of(plan, self.shape)
        self.directory = Path(config.resilience_dir)
        self.files = RunFiles(self.directory, config.application_module, config.name)
        # set up by run() before any job is submitted
        self.ingress: Ingress
        self.client: FlinkClient
        self.start: Start
        self.external: asyncio.AbstractServer | None = None
        self.job: JobHandle | None = None  # the run's current job; None during a rescale
        self.status = "CREATED"
        self.failure = ""
        self.job_ended = asyncio.Event()  # the current job reached a terminal status
        # set by cluster_shutdown, a savepoint request or the first SIGTERM/SIGINT
        self.shutdown = asyncio.Event()
        self.savepoint_to: Path | None = None  # the stop asked for is a savepoint, here
        self.rescales: asyncio.Queue[int] = asyncio.Queue()
        self.signalled = False
        self.scratch: Path | None = None
        self.table: KeyTable | None = None
        self.parallelism = config.parallelism
        self.loop: asyncio.AbstractEventLoop  # run()'s, which the job threads report to
        self.record: RunRecord | None = None  # as last written

    # -- the whole run ---------------------------------------------------------------------

    async def run(self) -> int:
        try:
            self.files.lock()
        except RunLocked as err:
            warn(error_line(err))
            return 1
        self.loop = loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            if self.files.record.exists() and not await self._previous_gone():
                return 1
            try:
                self.start = plan_start(self.config, self.files, self.identity,
                                        len(self.plan.pipelines))  # fmt: skip
            except OSError as err:
                warn(error_line(f"cannot use the run's files in {self.directory}: "
                                f"{err.filename}: {os_reason(err)}"))  # fmt: skip
                return 1
            self.ingress = Ingress(self.plan, self.start.streams, self.start.connections)
            for stream, left_open in zip(self.start.streams, self.start.dangling):
                self.ingress.close_connections(stream, left_open)
            try:
                await self.ingress.bind(self.config.ingress)
                if self.config.external is not None:
                    self.external = await serve_external(self, self.config.name,
                                                         self.config.external)  # fmt: skip
            except BindError as err:
                warn(error_line(err))
                return 1
            self.scratch = Path(tempfile.mkdtemp(prefix="machida-flink-"))
            self.client = FlinkClient(self.config, self.module, self.plan, self.shape,
                                      self.scratch, self.files.checkpoints)  # fmt: skip
            self._announce(self.start)
            return await self._run_jobs(self.start)
        except RestoreError as err:
            warn(error_line(err))
            return 1
        finally:
            await self._close()

    async def _close(self) -> None:
        if self.external is not None:
            self.external.close()
        ingress: Ingress | None = vars(self).get("ingress")
        start: Start | None = vars(self).get("start")
        client: FlinkClient | None = vars(self).get("client")
        if ingress is not None:
            ingress.close()
        elif start is not None:
            start.close()
        if start is not None and start.kind != "resume" and not (ingress and ingress.opened):
            for path in [*self.files.stale(), self.files.record]:  # nothing to resume
                remove(path)
        if client is not None:
            await asyncio.to_thread(client.stop)
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.files.unlock()

    def _announce(self, start: Start) -> None:
        if start.kind == "fresh":
            return
        if start.kind == "resume":
            say("Recovering from recovery files!")
            if self.config.parallelism_given and self.config.parallelism != start.parallelism:
                warn(f"WARNING: --parallelism {self.config.parallelism} ignored: the run "
                     f"resumes at parallelism {start.parallelism}, where it was (rescale it "
                     f"once it runs)")  # fmt: skip
        else:
            say(f"Starting from savepoint {start.restore}")
        for pipeline, stream in zip(self.plan.pipelines, start.streams):
            say(f"RESILIENCE: {pipeline.name} source had accepted {stream.records} record(s)")
        if start.kind == "resume" and start.restore is None:
            say("Flink job: no checkpoint was completed; the recorded input is read again")

    async def _previous_gone(self) -> bool:
        """A resumed run's previous process may have left its JVM exiting, or (on a session
        cluster) its job running: wait for the one, cancel the other."""
        record = RunRecord.load(self.files.record)
        jvm = record.jvm
        if jvm is not None and still_running(jvm):
            pid = jvm[0]
            say(f"Waiting for the JVM of the previous run (pid {pid}) to exit")
            if not await _until(lambda: not still_running(jvm), PREVIOUS_S):
                warn(error_line(f"the JVM of the previous run (pid {pid}) still runs after "
                                f"{PREVIOUS_S:.0f} s; stop it, then start this again"))  # fmt: skip
                return False
        if self.config.jobmanager is None or record.job_id is None:
            return True
        address, job_id = self.config.jobmanager, record.job_id

        def running() -> bool:
            jobs = rest.jobs(address)
            return any(j["jid"] == job_id and j["state"] not in TERMINAL for j in jobs)

        try:
            if await asyncio.to_thread(running):
                say(f"Cancelling Flink job {job_id}, left running by the previous run")
                await asyncio.to_thread(rest.cancel, address, job_id)
                if await _until(lambda: not running(), PREVIOUS_S):
                    return True
                left = f"Flink job {job_id} of the previous run still runs"
                warn(error_line(f"{left} after {PREVIOUS_S:.0f} s; cancel it, then start this "
                                f"again"))  # fmt: skip
                return False
        except rest.RestError as err:
            warn(error_line(f"cannot ask the Flink cluster about the previous run's job: {err}"))
            return False
        return True

    async def _run_jobs(self, start: Start) -> int:
        self.table = start.table
        if not await self._submit(start.parallelism, start.restore, start.claim):
            return 1
        if not self.shutdown.is_set():  # senders are accepted only once there is a job
            for line in await self.ingress.open_sources():
                say(line)
        if await self._first(self.ingress.all_subscribed()) and not self._stopping():
            if start.kind == "resume":
                say("|~~ - Recovery COMPLETE - ~~|")
            say(READY)
        while not (self._stopping() or self.job_ended.is_set()):
            asked = asyncio.ensure_future(self.rescales.get())
            if await self._first(asked):
                await self._rescale(asked.result())
            else:
                asked.cancel()
        if self._stopping() and not self.job_ended.is_set():
            if self.savepoint_to is not None and self.ingress.failure is None:
                return await self._savepoint(self.savepoint_to)
            return await self._clean_shutdown()
        warn(f"ERROR: the Flink job ended {self.status}{self.failure}{self._kept()}")
        return 1

    async def _first(self, awaitable) -> bool:
        """Wait for ``awaitable``, a stop, or the current job's end; True if it came first."""
        wanted = asyncio.ensure_future(awaitable)
        stops = [asyncio.ensure_future(e.wait())
                 for e in (self.shutdown, self.ingress.failed, self.job_ended)]  # fmt: skip
        try:
            await asyncio.wait([wanted, *stops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in stops:
                task.cancel()
        if not wanted.done():
            wanted.cancel()
            return False
        return True

    def _stopping(self) -> bool:
        return self.shutdown.is_set() or self.ingress.failed.is_set()

    def _kept(self) -> str:
        """What a run that ends without draining says about its files."""
        if not self.files.record.exists():
            return ""
        return (f"; what it had not processed stays recorded in {self.directory} "
                f"({self.files.prefix}-*), and the same command resumes the run")  # fmt: skip

    # -- jobs ---------------------------------------------------------------------------------

    async def _submit(self, parallelism: int, restore: Path | None, claim: bool) -> bool:
        """Submit the run's next job; its record is on disk before the job can take input."""
        self.ingress.new_epoch()
        self.status, self.failure = "CREATED", ""
        self.job_ended.clear()
        try:
            await asyncio.to_thread(self.client.start)  # so that the record names its JVM
            if self.table is None:
                self.table = await asyncio.to_thread(self.client.key_table, parallelism)
            await self._save_record(parallelism, None, restore)
            job = await asyncio.to_thread(
                self.client.submit, parallelism, self.table, restore, claim,
                self.ingress.address, self.ingress.token.hex(), self._report,
            )  # fmt: skip
        except Exception as err:
            warn(error_line(f"the Flink job could not be started on {self.client.where}: "
                            f"{first_line(err)}"))  # fmt: skip
            return False
        self.job, self.parallelism = job, parallelism
        job.watch()
        origin = f", from {restore}" if restore is not None else ""
        say(f"Flink job {job.job_id} submitted to {self.client.where}, parallelism "
            f"{parallelism}{origin}")  # fmt: skip
        say("Single worker topology" if parallelism == 1 else f"{parallelism} worker topology")
        await self._save_record(parallelism, job.job_id, restore)
        return True

    async def _save_record(self, parallelism: int, job_id: str | None, restore: Path | None):
        assert self.table is not None
        self.record = RunRecord(
            self.identity, self.table, parallelism, job_id,
            str(restore) if restore is not None else None, self.start.origin,
            self.client.jvm(),
        )  # fmt: skip
        await asyncio.to_thread(self.record.save, self.files.record)

    async def _mark_stopping(self) -> None:
        """Before the job is told to drain and finish: a run that stops before its files are
        removed then tells a finished job (whose checkpoints Flink removed) from a lost one."""
        if self.record is not None:
            self.record = replace(self.record, stopping=True)
            try:
                await asyncio.to_thread(self.record.save, self.files.record)
            except OSError as err:
                warn(f"WARNING: cannot write {self.files.record}: {os_reason(err)}; the "
                     f"drain goes on")  # fmt: skip

    def _report(self, job: JobHandle, status: str, failure: str) -> None:
        """From a job's threads: hand what became of it to the loop."""
        with contextlib.suppress(RuntimeError):  # the loop has closed: the run is over
            self.loop.call_soon_threadsafe(self._job_status, job, status, failure)

    def _job_status(self, job: JobHandle, status: str, failure: str) -> None:
        if job is not self.job or self.status in TERMINAL or status == self.status:
            return
        self.status = status
        self.failure = failure or self.failure
        say(f"Flink job: {status}")
        if status in TERMINAL:
            self.job_ended.set()

    # -- rescaling ----------------------------------------------------------------------------

    def rescale(self, text: str, reply: Reply) -> None:
        """``external_sender -t rescale -m N``: checked here, done in turn by the run."""
        limit = self.table.max_parallelism if self.table else MAX_PARALLELISM
        try:
            wanted = int(text.strip())
        except ValueError:
            wanted = 0
        if not 1 <= wanted <= limit:
            warn(f"ERROR: rescale: expected a parallelism from 1 to {limit} (the max "
                 f"parallelism), got {text!r}; nothing changes")  # fmt: skip
        elif self.shutdown.is_set():
            warn(f"WARNING: rescale to {wanted} ignored: the run is stopping")
        else:
            self.rescales.put_nowait(wanted)

    async def _rescale(self, wanted: int) -> None:
        old, current = self.job, self.parallelism
        assert old is not None  # between rescales the run always has a job
        if wanted == current:
            say(f"Flink job: already at parallelism {wanted}")
            return
        if not await self._slots_for(wanted, current):
            return
        say(f"Flink job: rescaling to {wanted}")
        if not await self._first(wait_event(self.ingress.checkpointed, SETTLE_S)):
            return  # the run stops, or the job ended: nothing to rescale
        if not self.ingress.checkpointed.is_set():
            warn(f"ERROR: rescaling to {wanted}: the Flink job ({self.status}) has completed no "
                 f"checkpoint in {SETTLE_S:.0f} s, so not all of its tasks run; it goes on at "
                 f"parallelism {current}")  # fmt: skip
            return
        started = time.monotonic()
        self.job = None  # what becomes of it is no longer the run's
        try:
            savepoint = await asyncio.to_thread(
                old.stop_with_savepoint, self.files.checkpoints / RESCALES
            )
        except Exception as err:
            self.job = old
            warn(f"ERROR: rescaling to {wanted} failed: {first_line(err)}; the Flink job goes "
                 f"on at parallelism {current}")  # fmt: skip
            if old.ended:  # what it reported while it was not the run's
                self._job_status(old, old.final, old.failure)
            return
        await _until(lambda: old.ended, DRAIN_S)  # so that its slots are free for the next job
        stopped = time.monotonic() - started
        if not await self._submit(wanted, savepoint, claim=True):
            warn(f"ERROR: the Flink job could not start at parallelism {wanted}; starting it "
                 f"again at parallelism {current} from {savepoint}")  # fmt: skip
            if not await self._submit(current, savepoint, claim=True):
                self.status, self.failure = "FAILED", ": it could not be started again"
                self.job_ended.set()
                return
        submitted = time.monotonic() - started - stopped
        say(f"Flink job: stopped with a savepoint in {stopped:.1f} s, the new job submitted "
            f"{submitted:.1f} s later")  # fmt: skip

    async def _slots_for(self, wanted: int, current: int) -> bool:
        """On a session cluster: whether it has the task slots ``wanted`` subtasks need once
        the job's own ``current`` are free."""
        if self.config.jobmanager is None or wanted <= current:
            return True
        try:
            free = await asyncio.to_thread(rest.free_slots, self.config.jobmanager)
        except rest.RestError as err:
            warn(f"ERROR: rescale to {wanted}: cannot ask the Flink cluster for free task "
                 f"slots: {err}; nothing changes")  # fmt: skip
            return False
        if free + current >= wanted:
            return True
        host, port = self.config.jobmanager
        warn(f"ERROR: rescale to {wanted}: the Flink cluster at {host}:{port} has {free} free "
             f"task slot(s) and the job holds {current}; start more TaskManagers (make "
             f"flink-cluster-add), then ask again; the job goes on at parallelism "
             f"{current}")  # fmt: skip
        return False

    # -- stopping ----------------------------------------------------------------------------

    def savepoint(self, text: str, reply: Reply) -> None:
        """``external_sender -t savepoint [-m DIR]``: drain, stop with a savepoint, exit 0."""
        if self.shutdown.is_set():
            warn("WARNING: savepoint ignored: the run is already stopping")
            return
        say("External Savepoint received.")
        self.savepoint_to = Path(text.strip()) if text.strip() else self.files.savepoints
        self.shutdown.set()

    def clean_shutdown(self, reason: str) -> None:
        self.shutdown.set()

    def rotate_log(self, worker: str, reply: Reply) -> None:
        warn("WARNING: RotateLog ignored: on Flink, state lives in checkpoints, not logs")

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM/SIGINT drains the job as cluster_shutdown does; a second one
        exits at once, with status 1."""
        if self.signalled:
            self._force_exit(sig)
        self.signalled = True
        say(f"{sig.name} received: clean shutdown (a second signal exits without draining)")
        self.savepoint_to = None
        self.shutdown.set()

    def _force_exit(self, sig: signal.Signals) -> None:
        warn(f"ERROR: second {sig.name}: exiting without draining{self._kept()}")
        job = self.job
        if job is not None and self.config.jobmanager is not None:
            cancel = threading.Thread(target=job.cancel, daemon=True)  # it would outlive us
            cancel.start()
            cancel.join(FORCE_CANCEL_S)
        client: FlinkClient | None = vars(self).get("client")
        if client is not None:
            client.kill()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.files.unlock()
        sys.stdout.flush()
        os._exit(1)

    def _drain_deadline(self) -> float:
        return DRAIN_S + 2 * self.config.checkpoint_interval_ms / 1000

    async def _clean_shutdown(self, ok: int = 0) -> int:
        self.ingress.stop_sources()
        await self._mark_stopping()
        self.ingress.end_streams()
        deadline = self._drain_deadline()
        if not await _until(self.job_ended.is_set, deadline):
            if self.job is not None:
                await asyncio.to_thread(self.job.cancel)
            still = f"the Flink job was still {self.status} after {deadline:.0f} s"
            warn(f"ERROR: clean shutdown could not drain: {still} and is cancelled{self._kept()}")
            return 1
        if self.status != "FINISHED":
            warn(f"ERROR: clean shutdown could not drain: the Flink job ended "
                 f"{self.status}{self.failure}{self._kept()}")  # fmt: skip
            return 1
        self._remove_files()
        say("Connections: Finished shutdown procedure.")
        return 1 if self.ingress.failure is not None else ok

    async def _savepoint(self, directory: Path) -> int:
        """Stop accepting, let the job read and checkpoint everything recorded, then stop it
        with a savepoint that ends where the streams end, described for --from-savepoint."""
        self.ingress.stop_sources()
        ingress = self.ingress
        deadline = self._drain_deadline()
        if not await _until(lambda: ingress.caught_up() or self.job_ended.is_set(), deadline):
            warn(f"ERROR: savepoint: the Flink job had not checkpointed all of its input after "
                 f"{deadline:.0f} s; it is drained and finished instead")  # fmt: skip
            return await self._clean_shutdown(ok=1)
        if self.job_ended.is_set():
            return await self._clean_shutdown()
        job, table = self.job, self.table
        assert job is not None and table is not None  # a job ran: it had a key table
        await self._mark_stopping()
        try:
            savepoint = await asyncio.to_thread(job.stop_with_savepoint, directory)
        except Exception as err:
            warn(f"ERROR: the savepoint failed: {first_line(err)}; the Flink job is drained "
                 f"and finished instead")  # fmt: skip
            return await self._clean_shutdown(ok=1)
        streams = tuple(Base(s.size, s.records, ingress.connections) for s in ingress.streams)
        info = SavepointInfo(self.identity, table, self.parallelism, streams)
        try:
            await asyncio.to_thread(info.save, savepoint)
        except OSError as err:
            warn(f"ERROR: cannot write {savepoint / SAVEPOINT_INFO}: {os_reason(err)}; "
                 f"--from-savepoint cannot start from {savepoint} without it (the run's files "
                 f"stay in {self.directory})")  # fmt: skip
            return 1
        await _until(self.job_ended.is_set, DRAIN_S)
        say(f"Savepoint completed. Path: {savepoint}")
        self._remove_files()
        say("Connections: Finished shutdown procedure.")
        return 0

    def _remove_files(self) -> None:
        say("Removing recovery files")
        self.ingress.close()
        paths = self.ingress.paths
        # the record first: without it, what is left is never taken for a run to resume
        for path in [self.files.record, *paths, *map(base_path, paths), self.files.checkpoints]:
            if path.exists():
                say(f"...Removing {path}...")
                remove(path)
        say("Recovery files removed.")


async def _until(done: Callable[[], bool], timeout: float) -> bool:
    """Wait until ``done()`` holds, looking every :data:`POLL_S`; False if ``timeout`` passes
    first. (What it waits on is set by threads and other connections alike.)"""
    deadline = time.monotonic() + timeout
    while not done():
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        await asyncio.sleep(min(POLL_S, left))
    return True
