"""One machida-flink process: the ingress and external channel here, the job in Flink.

The asyncio loop of this process owns the sockets (sources, the ingress's
serve port, ``--external``); a thread owns everything that talks to the JVM
(building and submitting the job, watching its status), because PyFlink's
calls block. Console lines follow machida's where they mean the same thing:
``<pipeline> source listening on``, ``Application has successfully
initialized.`` once the job's readers have subscribed to every stream, and on
``cluster_shutdown`` the clean-shutdown lines, after the job has drained and
finished. A first SIGTERM or SIGINT drains the same way (the job cannot resume
in a later run, so stopping without draining would lose input); a second one
exits at once with status 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

from machida.app.loader import serializers
from machida.console import error_line, say, warn
from machida.errors import BindError
from machida.external import serve_external
from machida_flink import jar, job
from machida_flink.files import RunFiles, RunLocked, remove
from machida_flink.ingress import Ingress
from machida_flink.options import FlinkConfig
from machida_flink.translate import shape

READY = "Application has successfully initialized."
# A clean shutdown waits this long for the job to finish, plus two checkpoint
# intervals (a finishing Flink job takes one last checkpoint).
DRAIN_S = 30.0
POLL_S = 0.25
# A forced exit (second signal) waits this long for a session cluster to take the cancel.
FORCE_CANCEL_S = 3.0
TERMINAL = {"FINISHED", "FAILED", "CANCELED"}


class FlinkRunner:
    def __init__(self, config: FlinkConfig, module, plan) -> None:
        self.config = config
        self.module = module
        self.plan = plan
        self.shape = shape(plan)
        self.directory = Path(config.resilience_dir)
        self.files = RunFiles(self.directory, config.application_module, config.name)
        self.checkpoints = self.files.checkpoints
        self.ingress: Ingress | None = None
        self.external = None
        self.status = "CREATED"
        self.status_changed = asyncio.Event()
        # set by cluster_shutdown or the first SIGTERM/SIGINT: drain the job and finish
        self.shutdown = asyncio.Event()
        self.signalled = False
        self.job_client = None
        self.gateway = None
        self.failure = ""
        self.cancelling = False
        self.scratch: Path | None = None

    # -- the whole run ---------------------------------------------------------------------

    async def run(self) -> int:
        try:
            self.files.lock()
        except RunLocked as err:
            warn(error_line(err))
            return 1
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_signal, sig)
        try:
            self._discard_stale()
            self.scratch = Path(tempfile.mkdtemp(prefix="machida-flink-"))
            paths = [self.files.stream(p) for p in range(len(self.plan.pipelines))]
            self.ingress = Ingress(self.plan, paths)
            try:
                await self.ingress.bind(self.config.ingress)
                self.external = await self._listen_external()
            except BindError as err:
                warn(error_line(err))
                return 1
            return await self._run_job()
        finally:
            if self.external is not None:
                self.external.close()
            if self.ingress is not None:
                self.ingress.close()
                if not self.ingress.opened:  # no sender was ever accepted: nothing to keep
                    for path in self.ingress.paths:
                        remove(path)
            await asyncio.to_thread(self._stop_jvm)
            if self.scratch is not None:
                shutil.rmtree(self.scratch, ignore_errors=True)
            self.files.unlock()

    async def _run_job(self) -> int:
        where = (
            f"jobmanager {self.config.jobmanager[0]}:{self.config.jobmanager[1]}"
            if self.config.jobmanager
            else "an embedded MiniCluster"
        )
        try:
            job_id = await asyncio.to_thread(self._submit)
        except Exception as err:
            warn(error_line(f"the Flink job could not be started on {where}: {_first_line(err)}"))
            return 1
        p = self.config.parallelism
        say(f"Flink job {job_id} submitted to {where}, parallelism {p}")
        say("Single worker topology" if p == 1 else f"{p} worker topology")
        loop = asyncio.get_running_loop()
        for target in (self._watch, self._await_result):
            threading.Thread(target=target, args=(loop,), daemon=True).start()
        if not self.shutdown.is_set():  # senders are accepted only once there is a job
            for line in await self.ingress.open_sources():
                say(line)
        ready = asyncio.ensure_future(self.ingress.all_subscribed())
        ended = asyncio.ensure_future(self._terminal())
        stops = [asyncio.ensure_future(e.wait()) for e in (self.shutdown, self.ingress.failed)]
        try:
            await asyncio.wait([ready, ended, *stops], return_when=asyncio.FIRST_COMPLETED)
            if ready.done() and not self._stopping():
                say(READY)
                await asyncio.wait([ended, *stops], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in [ready, *stops]:
                task.cancel()
        if self._stopping() and not ended.done():
            return await self._clean_shutdown(ended)
        warn(f"ERROR: the Flink job ended {self.status}{self.failure}{self._lost()}")
        return 1

    def _lost(self) -> str:
        """What a run that ends without draining says about its input."""
        if not self.ingress.opened:
            return ""
        return (f"; input it had not processed is lost with this run ({self.files.prefix}-*"
                f".ingress in {self.directory} are kept to look at; the next start discards "
                f"them)")  # fmt: skip

    def _stopping(self) -> bool:
        return self.shutdown.is_set() or self.ingress.failed.is_set()

    # -- the JVM side (called in threads) ----------------------------------------------------

    def _submit(self) -> str:
        # py4j logs every failed call with a traceback, through the root logger, whose level
        # PyFlink's imports reset; once the job has ended (and the JVM has stopped) the status
        # polls and py4j's finalizers fail by design. Failures that matter reach us as
        # exceptions and are printed as one line.
        logging.disable(logging.CRITICAL)
        from machida_flink.stages import Wiring

        path = jar.ensure()
        self.gateway = job.start_gateway()
        options = job.JobOptions(
            parallelism=self.config.parallelism,
            checkpoint_interval_ms=self.config.checkpoint_interval_ms,
            state_backend=self.config.state_backend,
            checkpoint_dir=self.checkpoints,
            jobmanager=self.config.jobmanager,
        )
        name = f"machida: {self.plan.name}"
        env = job.environment(options, name, path)
        env.add_python_file(str(job.python_bundle(self.module, self.scratch)))
        wiring = Wiring(
            module=self.config.application_module,
            args=tuple(self.config.app_args),
            routes=self.shape.routes,
            flink_keys=job.flink_keys(self.plan, self.config.parallelism),
            sinks=self.shape.sinks,
            fingerprint=self.plan.fingerprint(),
        )
        serializers(self.module)  # the same lookup the operators make, so errors show here
        job.build_job(
            env, self.plan, self.shape, wiring, self._ingress_address(), self.ingress.token.hex()
        )
        self.job_client = env.execute_async(name)
        return str(self.job_client.get_job_id())

    def _ingress_address(self) -> tuple[str, int]:
        host, port = self.ingress.address
        if host in ("0.0.0.0", "::"):
            import socket

            host = socket.gethostname()
        return host, port

    def _await_result(self, loop: asyncio.AbstractEventLoop) -> None:
        """Block on the job's result: FINISHED, or how it failed (or CANCELED by us)."""
        try:
            self.job_client.get_job_execution_result().result()
            status = "FINISHED"
        except Exception as err:
            status = "CANCELED" if self.cancelling else "FAILED"
            self.failure = f": {_first_line(err)}"
        loop.call_soon_threadsafe(self._status, status)

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        """Report the job's status changes (RUNNING, RESTARTING, ...) until it ends."""
        last = None
        while self.status not in TERMINAL:
            try:
                status = self.job_client.get_job_status().result().name
            except Exception:
                status = last  # the job is ending; its result says how
            if status != last and status not in TERMINAL:
                last = status
                loop.call_soon_threadsafe(self._status, status)
            time.sleep(POLL_S)

    def _cancel(self) -> None:
        self.cancelling = True
        if self.job_client is not None and self.status not in TERMINAL:
            with contextlib.suppress(Exception):
                self.job_client.cancel().result()

    def _stop_jvm(self) -> None:
        if self.gateway is None:
            return
        self.gateway.terminate()
        try:
            self.gateway.wait(10)
        except Exception:
            self.gateway.kill()
            self.gateway.wait()

    # -- events -----------------------------------------------------------------------------

    def _status(self, status: str) -> None:
        if self.status in TERMINAL or status == self.status:
            return
        self.status = status
        say(f"Flink job: {status}")
        self.status_changed.set()

    async def _terminal(self) -> str:
        while self.status not in TERMINAL:
            self.status_changed.clear()
            await self.status_changed.wait()
        return self.status

    def _on_signal(self, sig: signal.Signals) -> None:
        """The first SIGTERM/SIGINT drains the job as cluster_shutdown does; a second one
        exits at once, with status 1."""
        if self.signalled:
            self._force_exit(sig)
        self.signalled = True
        say(f"{sig.name} received: clean shutdown (a second signal exits without draining)")
        self.shutdown.set()

    def _force_exit(self, sig: signal.Signals) -> None:
        warn(f"ERROR: second {sig.name}: exiting without draining{self._lost()}")
        if self.job_client is not None:  # a job on a session cluster outlives this process
            cancel = threading.Thread(target=self._cancel, daemon=True)
            cancel.start()
            cancel.join(FORCE_CANCEL_S)
        if self.gateway is not None:
            self.gateway.kill()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
        self.files.unlock()
        sys.stdout.flush()
        os._exit(1)

    async def _clean_shutdown(self, ended: asyncio.Future) -> int:
        self.ingress.stop_sources()
        deadline = DRAIN_S + 2 * self.config.checkpoint_interval_ms / 1000
        try:
            status = await asyncio.wait_for(asyncio.shield(ended), deadline)
        except asyncio.TimeoutError:
            await asyncio.to_thread(self._cancel)
            still = f"the Flink job was still {self.status} after {deadline:.0f} s"
            warn(f"ERROR: clean shutdown could not drain: {still} and is cancelled{self._lost()}")
            return 1
        if status != "FINISHED":
            warn(f"ERROR: clean shutdown could not drain: the Flink job ended "
                 f"{status}{self.failure}{self._lost()}")  # fmt: skip
            return 1
        self._remove_files()
        say("Connections: Finished shutdown procedure.")
        return 1 if self.ingress.failure is not None else 0

    def _remove_files(self) -> None:
        say("Removing recovery files")
        self.ingress.close()
        for path in [*self.ingress.paths, self.checkpoints]:
            if path.exists():
                say(f"...Removing {path}...")
                remove(path)
        say("Recovery files removed.")

    def _discard_stale(self) -> None:
        for path in self.files.stale():
            warn(f"WARNING: discarding {path}, left by a run that did not shut down cleanly")
            remove(path)

    async def _listen_external(self):
        if self.config.external is None:
            return None
        return await serve_external(self, self.config.name, self.config.external)

    # -- the external channel's requests (machida.external) -----------------------------------

    def clean_shutdown(self, reason: str) -> None:
        self.shutdown.set()

    def rotate_log(self, worker: str, reply) -> None:
        warn("WARNING: RotateLog ignored: on Flink, state lives in checkpoints, not logs")


def _first_line(err: BaseException) -> str:
    text = str(err).strip() or type(err).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        if "Caused by" in line or "Exception:" in line:
            return line.strip()
    return lines[0].strip() if lines else type(err).__name__
