"""The JVM side of a run, called from threads, because PyFlink's calls block.

:class:`FlinkClient` starts PyFlink's JVM once per process and builds and
submits the run's jobs: the first one, and each later one a rescale or a
restart restores from a savepoint or a retained checkpoint, at any
parallelism. Every submitted job is a :class:`JobHandle`, whose two daemon
threads report its status changes and its end (``report(handle, status,
failure)``); it can be stopped with a savepoint or cancelled.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import subprocess
import threading
import time
from pathlib import Path
from types import ModuleType
from typing import Callable

from machida.app.loader import serializers
from machida.app.plan import AppPlan
from machida_flink import jar, job
from machida_flink.options import FlinkConfig
from machida_flink.restore import KeyTable, local_path
from machida_flink.translate import Shape

POLL_S = 0.25
TERMINAL = frozenset({"FINISHED", "FAILED", "CANCELED"})


def first_line(err: BaseException) -> str:
    """The line of a (Java) exception that says what went wrong."""
    text = str(err).strip() or type(err).__name__
    lines = [line for line in text.splitlines() if line.strip()]
    for line in lines:
        if "Caused by" in line or "Exception:" in line:
            return line.strip()
    return lines[0].strip() if lines else type(err).__name__


class JobHandle:
    """One submitted Flink job: its client, and the threads that report what becomes of it."""

    def __init__(self, client, report: Callable[[JobHandle, str, str], None]) -> None:
        self.client = client
        self.job_id = str(client.get_job_id())
        self.cancelling = False
        self.ended = False
        self.final = ""  # its terminal status, once it has ended
        self.failure = ""
        self._report = report

    def watch(self) -> None:
        """Start reporting (once the run has taken this job as its own, so that no report
        comes before it)."""
        for target in (self._watch, self._await_result):
            threading.Thread(target=target, daemon=True).start()

    def _await_result(self) -> None:
        """Block on the job's result: FINISHED, or how it failed (or CANCELED by us)."""
        try:
            self.client.get_job_execution_result().result()
            status, failure = "FINISHED", ""
        except Exception as err:
            status = "CANCELED" if self.cancelling else "FAILED"
            failure = f": {first_line(err)}"
        self.final, self.failure = status, failure
        self.ended = True
        self._report(self, status, failure)

    def _watch(self) -> None:
        """Report the job's status changes (RUNNING, RESTARTING, ...) until it ends."""
        last = None
        while not self.ended:
            try:
                status = self.client.get_job_status().result().name
            except Exception:
                status = last  # the job is ending; its result says how
            if status != last and status not in TERMINAL and not self.ended:
                last = status
                self._report(self, status, "")
            time.sleep(POLL_S)

    def stop_with_savepoint(self, directory: Path) -> Path:
        """Flink's stop-with-savepoint: the sources stop, everything they emitted is processed
        (the savepoint's barrier follows it), the savepoint is written to a new directory
        under ``directory``, and the job finishes. Returns that directory."""
        from pyflink.java_gateway import get_gateway

        formats = get_gateway().jvm.org.apache.flink.core.execution.SavepointFormatType
        target = directory.resolve().as_uri()
        stopping = self.client._j_job_client.stopWithSavepoint(False, target, formats.CANONICAL)
        return local_path(str(stopping.get()))

    def cancel(self) -> None:
        self.cancelling = True
        if not self.ended:
            with contextlib.suppress(Exception):
                self.client.cancel().result()


class FlinkClient:
    """PyFlink's JVM for this process, and everything that builds or submits a job in it."""

    def __init__(self, config: FlinkConfig, module: ModuleType, plan: AppPlan, shape: Shape,
                 scratch: Path, checkpoints: Path) -> None:  # fmt: skip
        self.config = config
        self.module = module
        self.plan = plan
        self.shape = shape
        self.scratch = scratch
        self.checkpoints = checkpoints
        self.gateway: subprocess.Popen | None = None
        self._jar: Path | None = None
        self._bundle: Path | None = None

    @property
    def where(self) -> str:
        if self.config.jobmanager is None:
            return "an embedded MiniCluster"
        host, port = self.config.jobmanager
        return f"jobmanager {host}:{port}"

    @property
    def job_name(self) -> str:
        return f"machida: {self.plan.name}"

    def start(self) -> None:
        """Start the JVM (once); compile the jar first if a Java source changed."""
        if self.gateway is not None:
            return
        # py4j logs every failed call with a traceback, through the root logger, whose
        # level PyFlink's imports reset; once a job has ended the status polls fail by
        # design. Failures that matter reach us as exceptions and are printed as one line.
        logging.disable(logging.CRITICAL)
        from pyflink.util.java_utils import add_jars_to_context_class_loader

        self._jar = jar.ensure()
        self.gateway = job.start_gateway()
        add_jars_to_context_class_loader([self._jar.resolve().as_uri()])  # KeyPlacement
        self._bundle = job.python_bundle(self.module, self.scratch)
        serializers(self.module)  # the same lookup the operators make, so errors show here

    def jvm(self) -> tuple[int, int] | None:
        """The JVM's process id and start time (which tell it from a later process that
        reuses the id)."""
        if self.gateway is None:
            return None
        return self.gateway.pid, process_start(self.gateway.pid)

    def key_table(self, parallelism: int) -> KeyTable:
        self.start()
        return job.key_table(self.plan, parallelism)

    def submit(self, parallelism: int, table: KeyTable, restore: Path | None, claim: bool,
               ingress: tuple[str, int], token: str,
               report: Callable[[JobHandle, str, str], None]) -> JobHandle:  # fmt: skip
        from machida_flink.stages import Wiring

        self.start()
        assert self._jar is not None and self._bundle is not None
        options = job.JobOptions(
            parallelism=parallelism,
            checkpoint_interval_ms=self.config.checkpoint_interval_ms,
            state_backend=self.config.state_backend,
            checkpoint_dir=self.checkpoints,
            jobmanager=self.config.jobmanager,
            max_parallelism=table.max_parallelism,
            restore=restore,
            claim=claim,
        )
        env = job.environment(options, self.job_name, self._jar)
        env.add_python_file(str(self._bundle))
        wiring = Wiring(
            module=self.config.application_module,
            args=tuple(self.config.app_args),
            routes=self.shape.routes,
            flink_keys=table.of_state(),
            sinks=self.shape.sinks,
            fingerprint=self.plan.fingerprint(),
        )
        job.build_job(env, self.plan, self.shape, wiring, reachable(ingress), token)
        return JobHandle(env.execute_async(self.job_name), report)

    def stop(self) -> None:
        """Stop the JVM (an embedded job goes with it)."""
        if self.gateway is None:
            return
        self.gateway.terminate()
        try:
            self.gateway.wait(10)
        except Exception:
            self.gateway.kill()
            self.gateway.wait()

    def kill(self) -> None:
        if self.gateway is not None:
            self.gateway.kill()


def reachable(address: tuple[str, int]) -> tuple[str, int]:
    """The ingress's serve address as TaskManagers dial it (a wildcard becomes this host)."""
    host, port = address
    if host in ("0.0.0.0", "::"):
        host = socket.gethostname()
    return host, port


def process_start(pid: int) -> int:
    """A live process's start time in clock ticks since boot (Linux); 0 for a process that
    is gone (or has exited and waits to be reaped), or where this is unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0
    fields = stat.rsplit(")", 1)[1].split()
    return 0 if fields[0] in ("Z", "X") else int(fields[19])


def still_running(jvm: tuple[int, int]) -> bool:
    """Whether the process a run recorded is still the one running under its id."""
    pid, started = jvm
    return started != 0 and process_start(pid) == started
