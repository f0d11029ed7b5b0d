"""One ``integration_test`` run, start to end, in the 2017 harness's order.

1. create the resilience directory, or remove the recovery files of this
   run's workers from it (any other file in it is left alone);
2. start the sinks and a metrics receiver on free ports, then choose the
   source, control, external and data ports (:mod:`.workers`);
3. start the workers 50 ms apart, the initializer first, failing if one has
   already exited, and wait up to 30 s for ``Application has successfully
   initialized`` in the initializer's output;
4. run the senders one after another, each to its source;
5. apply the stop condition (:mod:`.stopping`); a worker that exits by itself
   meanwhile fails the run;
6. SIGTERM the workers, stop the sinks, and check that the initializer
   reported a topology of ``--workers`` workers;
7. save the sinks' records to ``--output``, and remove the workers' recovery
   files again, and the resilience directory if step 1 created it.

:func:`pipeline_test` returns the sinks for the validation, or raises
:class:`RunError` with the reason and every worker's output.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shlex
from dataclasses import dataclass

from machida.metrics import serve_records
from wallaroo_tools.integration.inputs import Sender, batches
from wallaroo_tools.integration.sinks import Sink
from wallaroo_tools.integration.stopping import Idle, StopError, metrics_idle, over, sink_expect
from wallaroo_tools.integration.workers import Worker, choose_ports, commands, worker_names

READY = b"Application has successfully initialized"
# The recovery files a worker keeps in its resilience directory, as Wallaroo named them, and the
# suffix of one being written (machida/durability/recovery.py; a test keeps the two the same).
RECOVERY_EXTENSIONS = ("local-topology", "tcp-control", "workers", "tcp-data",
                       "connection-addresses")  # fmt: skip
TEMP_SUFFIX = ".tmp"
TOPOLOGY = re.compile(rb"(\w+) worker topology")
READY_TIMEOUT_S = 30.0
DEFAULT_SINK_EXPECT_TIMEOUT_S = 30.0
# With no stop condition, the run also ends when no stats record came for this long.
METRICS_TIMEOUT_S = 30.0
# Once the workers have exited, their sink connections close at once; this is a bound.
SINK_CLOSE_TIMEOUT_S = 5.0
# The 2017 harness started the workers this far apart ...
START_GAP_S = 0.05
# ... and paused this long after each batch a sender wrote.
SEND_INTERVAL_S = 0.001

log = logging.getLogger("integration")


class RunError(Exception):
    """The run failed: str is the reason, ``reports`` the workers' outputs."""

    def __init__(self, reason: str, reports: list[str] | None = None) -> None:
        super().__init__(reason)
        self.reports = reports or []


@dataclass(frozen=True)
class Run:
    """Everything one run needs, from the command line."""

    command: str
    argv: tuple  # the command, split as a shell would
    senders: tuple  # of Sender
    workers: int = 1
    sources: int = 1
    sinks: int = 1
    sink_mode: str = "framed"
    batch_size: int = 1
    host: str = "127.0.0.1"
    resilience_dir: str = "/tmp/res-dir"
    sink_expect: tuple | None = None  # one count per sink
    sink_expect_timeout: float = DEFAULT_SINK_EXPECT_TIMEOUT_S
    delay: float | None = None
    outputs: tuple | None = None  # one path per sink
    giles: bool = False


def recovery_file(names: list[str]) -> re.Pattern[str]:
    """The names the runner gives these workers' recovery files and event logs.

    ``<module>-<worker>.<ext>`` and ``<module>-<worker>[-<16 hex>].evlog``, each
    possibly with the runner's temporary suffix (machida/durability/recovery.py);
    the module is left open so a wrapper command is covered too.
    """
    workers = "|".join(re.escape(name) for name in names)
    kinds = "|".join(re.escape(ext) for ext in RECOVERY_EXTENSIONS)
    return re.compile(
        rf".+-(?:{workers})(?:\.(?:{kinds})|(?:-[0-9a-fA-F]{{16}})?\.evlog)"
        rf"(?:{re.escape(TEMP_SUFFIX)})?"
    )


def _recovery_files(path: str, workers: int) -> list[str]:
    ours = recovery_file(worker_names(workers))
    with os.scandir(path) as entries:
        return [e.path for e in entries if ours.fullmatch(e.name) and not e.is_dir()]


def prepare_resilience_dir(path: str, workers: int) -> bool:
    """Create ``path`` or clear this run's recovery files from it; whether it was created."""
    try:
        created = not os.path.isdir(path)
        os.makedirs(path, exist_ok=True)
        for file in _recovery_files(path, workers):
            os.remove(file)
    except OSError as err:
        raise RunError(f"cannot prepare --resilience-dir {path}: {err.strerror or err}") from None
    return created


def clear_resilience_dir(path: str, workers: int, created: bool) -> None:
    """Remove the run's recovery files, and the directory too if the run created it."""
    try:
        for file in _recovery_files(path, workers):
            os.remove(file)
        if created:
            os.rmdir(path)
    except OSError as err:
        log.warning("could not clear --resilience-dir %s: %s", path, err.strerror or err)


class _Cluster:
    """The workers of one run and what they are doing."""

    def __init__(self) -> None:
        self.workers: list[Worker] = []
        self.stopped = False

    def reports(self) -> list[str]:
        return [worker.report() for worker in self.workers]

    async def start(self, argvs: list[tuple[str, list[str]]]) -> None:
        for k, (name, argv) in enumerate(argvs, 1):
            worker = Worker(name, argv)
            self.workers.append(worker)
            log.info("%s: Running:\n%s", name, shlex.join(argv))
            try:
                await worker.start()
            except OSError as err:
                raise RunError(f"cannot run {argv[0]!r}: {err.strerror or err}") from None
            await asyncio.sleep(START_GAP_S)
            if worker.exited is not None:
                raise RunError(
                    f"Runner {k} of {len(argvs)} ({name}) has exited with status {worker.exited}"
                )

    async def wait_ready(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        initializer = self.workers[0]
        while True:
            for worker in self.workers:
                worker.watch()
            if READY in initializer.output:
                log.debug("Application reports it is ready.")
                return
            self._check_alive("before the application reported ready")
            left = deadline - loop.time()
            if left <= 0:
                raise RunError(f"Application did not report as ready after {timeout:g} seconds")
            waits = [asyncio.ensure_future(worker.changed()) for worker in self.workers]
            try:
                await asyncio.wait(waits, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for wait in waits:
                    wait.cancel()

    def _check_alive(self, when: str) -> None:
        for worker in self.workers:
            if worker.exited is not None:
                raise RunError(f"{worker.name} exited with status {worker.exited} {when}")

    async def while_alive(self, work) -> None:
        """Run ``work`` (a coroutine); a worker exiting by itself meanwhile fails the run."""
        task = asyncio.ensure_future(work)
        exits = [asyncio.ensure_future(worker.wait_exit()) for worker in self.workers]
        try:
            await asyncio.wait([task, *exits], return_when=asyncio.FIRST_COMPLETED)
            if not task.done():
                self._check_alive("while the test was running")
            await task
        finally:
            for pending in (task, *exits):
                pending.cancel()

    async def stop(self) -> None:
        if self.stopped:
            return
        self.stopped = True
        codes = await asyncio.gather(*(worker.stop() for worker in self.workers))
        for worker, code in zip(self.workers, codes):
            if worker.stopped_by_us and code not in (0, None):
                log.warning("%s exited with status %s after SIGTERM", worker.name, code)

    def check_topology(self, workers: int) -> None:
        match = TOPOLOGY.search(self.workers[0].output)
        if match is None:
            raise RunError("the initializer never printed its '<N> worker topology' line")
        word = match.group(1).decode()
        size = 1 if word.lower() == "single" else int(word) if word.isdigit() else None
        if size != workers:
            raise RunError(
                f"the initializer reports a '{word} worker topology' but --workers is {workers}"
            )


async def _send(sender: Sender, host: str, port: int, batch_size: int) -> None:
    where = f"{host}:{port}"
    log.info("Sender (%s) connecting to %s.", sender.flag, where)
    try:
        _, writer = await asyncio.open_connection(host, port)
    except OSError as err:
        raise RunError(f"{sender.flag} could not connect to source {sender.source} at {where}: "
                       f"{err.strerror or err}") from None  # fmt: skip
    sent = 0
    try:
        for chunk in batches(sender.records, batch_size):
            writer.write(chunk)
            await writer.drain()
            sent += batch_size
            await asyncio.sleep(SEND_INTERVAL_S)
        writer.close()
        await writer.wait_closed()
    except OSError as err:
        writer.close()
        raise RunError(f"{sender.flag} lost its connection to {where} after "
                       f"{min(sent, len(sender.records))} of {len(sender.records)} records: "
                       f"{err.strerror or err}") from None  # fmt: skip
    log.debug("Sender (%s) sent %d records.", sender.flag, len(sender.records))


async def _send_and_stop(run: Run, ports, sinks: list[Sink], idle: Idle, news) -> None:
    for sender in run.senders:
        await _send(sender, run.host, ports.sources[sender.source], run.batch_size)
    log.debug("All senders completed sending.")
    if run.sink_expect is not None:
        log.debug("Waiting for %s messages at the sinks with a timeout of %g seconds",
                  list(run.sink_expect), run.sink_expect_timeout)  # fmt: skip
        await sink_expect(sinks, list(run.sink_expect), run.sink_expect_timeout)
    elif run.delay is not None:
        log.debug("Waiting %g seconds before shutting off workers.", run.delay)
        await asyncio.sleep(run.delay)
    else:
        log.debug("Waiting until metrics indicate no more traffic.")
        loop = asyncio.get_running_loop()
        if not await metrics_idle(idle, loop.time(), news, METRICS_TIMEOUT_S):
            log.warning("no stats record for %g seconds; stopping", METRICS_TIMEOUT_S)


async def pipeline_test(run: Run) -> list[Sink]:
    """Run the test; returns the sinks with their records, or raises :class:`RunError`."""
    created = prepare_resilience_dir(run.resilience_dir, run.workers)
    loop = asyncio.get_running_loop()
    sinks = [Sink(i, run.sink_mode) for i in range(run.sinks)]
    cluster = _Cluster()
    idle, news = Idle(run.workers), asyncio.Event()

    def on_record(record: dict) -> None:
        idle.record(record, loop.time())
        news.set()

    metrics = None
    try:
        try:
            for sink in sinks:
                await sink.start(run.host)
            metrics = await serve_records(run.host, 0, on_record)
            ports = choose_ports(run.host, run.sources)
        except OSError as err:
            raise RunError(f"cannot listen on {run.host}: {err.strerror or err}") from None
        outputs = ",".join(f"{run.host}:{sink.port}" for sink in sinks)
        await cluster.start(commands(run.argv, run.host, ports, outputs, metrics.port,
                                     run.resilience_dir, run.workers))  # fmt: skip
        await cluster.wait_ready(READY_TIMEOUT_S)
        try:
            await cluster.while_alive(_send_and_stop(run, ports, sinks, idle, news))
        except StopError as err:
            raise RunError(str(err)) from None
        log.debug("Shutting down workers.")
        await cluster.stop()
        log.debug("Shutting down all sinks.")
        for sink in sinks:
            if not await sink.connections_closed(SINK_CLOSE_TIMEOUT_S):
                log.warning(
                    "sink %d: a connection stayed open after the workers exited", sink.index
                )
            sink.close()
        expect = run.sink_expect or (None,) * len(sinks)
        why = over(sinks, list(expect))
        if why is not None:
            raise RunError(why)
        cluster.check_topology(run.workers)
        for worker in cluster.workers:
            log.debug("%s", worker.report())
        _save(sinks, run)
        return sinks
    except RunError as err:
        await cluster.stop()  # so the reports show how each worker ended
        err.reports = cluster.reports()
        raise
    finally:
        await cluster.stop()
        for sink in sinks:
            sink.close()
        if metrics is not None:
            metrics.close()
        clear_resilience_dir(run.resilience_dir, run.workers, created)


def _save(sinks: list[Sink], run: Run) -> None:
    for sink, path in zip(sinks, run.outputs or ()):
        try:
            sink.save(path, run.giles)
        except OSError as err:
            raise RunError(f"cannot write --output file {path}: {err.strerror or err}") from None
        log.debug("Saved %d records of sink %d to %s", sink.count, sink.index, path)
