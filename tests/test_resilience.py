"""Resilience mode on a real cluster: kill -9 a worker mid-stream, restart it, lose nothing."""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import re
import shutil
import signal
import subprocess

import pytest
from clusterhelp import Cluster
from toolhelp import Tool, closed_port, run_tool, wait_until

from machida.app.loader import load_plan, serializers
from machida.app.topology import LocalTopology
from machida.cli import parse_runner_args
from machida.durability.eventlog import encode_commit, read_log
from machida.durability.recovery import Expectation, Recover, RecoveryFiles, RecoveryRecord
from machida.durability.resilience import Resilience, Settings
from machida.runtime.dataplane import DataPlane
from machida.runtime.flow import FlowControl
from machida.wire.boundary import BatchEvent, BoundaryDecoder, ack

APP_SOURCE = pathlib.Path(__file__).resolve().parent.parent / "sequence_window.py"

RESILIENCE = ("--run-with-resilience",)
STREAM = 20_000
PACE = ("-s", "50", "-i", "10_000_000")  # about 5 000 messages a second


def odd_restarts(windows: list[list[int]]) -> list[list[int]]:
    """Odd windows that start again from zeroes after the series had begun."""
    return [w for w in windows if w[-1] % 2 == 1 and w[:3] == [0, 0, 0] and w[3] > 1]


def stream(cluster: Cluster, count: int = STREAM) -> Tool:
    return Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(count), "-y", "-g",
                "12", "-u", "-w", *PACE, cwd=cluster.dir)  # fmt: skip


def finish_and_check(cluster: Cluster, sender: Tool, count: int = STREAM,
                     strict: bool = False) -> list[list[int]]:  # fmt: skip
    """The sender ends, both final windows arrive, and the validator passes (``-a`` unless
    ``strict``: nothing may repeat) with no odd window starting again from zeroes."""
    assert sender.wait(120) == 0, sender.report()
    try:
        wait_until(lambda: {count - 1, count} <= {w[-1] for w in cluster.windows()}, 60,
                   "both final windows")  # fmt: skip
    except AssertionError as err:
        raise AssertionError(f"{err}\n{cluster.report()}") from None
    windows = cluster.windows()
    verdict = cluster.validate(count, *(() if strict else ("-a",)))
    assert verdict.returncode == 0, verdict.stderr.decode() + cluster.report()
    assert odd_restarts(windows) == []
    return windows


@pytest.mark.parametrize("kill_at", [1_000, 8_000, 15_000])
def test_kill_9_of_worker_2_mid_stream_recovers_its_state(tmp_path, kill_at):
    """Scenario 78 at three points of the stream."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster:
        out = cluster.procs["initializer"].stdout.decode()
        assert "****RESILIENCE MODE is active****" in out
        with stream(cluster) as sender:
            cluster.wait_windows(kill_at)
            assert cluster.kill("worker-2") == -9
            restarted = cluster.start_worker(1)
            restarted.wait_stdout(lambda o: b"|~~ - Recovery COMPLETE - ~~|" in o)
            finish_and_check(cluster, sender)
        out = restarted.stdout.decode()
        assert "Recovering from recovery files!" in out
        replayed = [line for line in out.splitlines() if line.startswith("RESILIENCE: Replayed")]
        assert replayed and int(replayed[0].split()[2]) >= 1, out
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert not list(tmp_path.glob("sequence_window-*"))


def test_repeated_crashes_still_deliver_everything(tmp_path):
    """Scenario 80: three kill -9 of worker-2 during one stream."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster, stream(cluster) as sender:
        for at in (3_000, 8_000, 13_000):
            cluster.wait_windows(at)
            cluster.kill("worker-2")
            cluster.start_worker(1).wait_stdout(lambda o: b"Recovery COMPLETE" in o)
        finish_and_check(cluster, sender)


def test_external_rotation_prints_the_five_lines_and_replaces_the_file(tmp_path):
    """Scenario 83, then a kill after the rotation (84)."""
    extra = (*RESILIENCE, "--log-rotation", "--stop-pause", "500_000_000")
    with Cluster(tmp_path, extra=extra).start() as cluster, stream(cluster, 10_000) as sender:
        cluster.wait_windows(2_000)
        before = sorted(p.name for p in tmp_path.glob("sequence_window-worker-2-*.evlog"))
        result = run_tool("external_sender", "-e", cluster.externals[0], "-t", "rotate-log",
                          "-m", "worker-2")  # fmt: skip
        assert result.returncode == 0
        lines = [
            "Starting event log rotation.",
            "~~~Stopping message processing for log rotation.~~~",
            "Snapshotting 1 steps to new log file.",
            "Steps snapshotting to new log file complete.",
            "~~~Resuming message processing.~~~",
        ]
        out = cluster.wait_for("worker-2", lines[-1].encode()).decode()
        positions = [out.index(line) for line in lines]
        assert positions == sorted(positions), out
        after = sorted(p.name for p in tmp_path.glob("sequence_window-worker-2-*.evlog"))
        assert len(before) == len(after) == 1 and before != after
        cluster.kill("worker-2")
        restarted = cluster.start_worker(1, *extra)
        restarted.wait_stdout(lambda o: b"Recovery COMPLETE" in o)
        finish_and_check(cluster, sender, 10_000)


def test_a_kill_during_the_rotation_pause_recovers_from_the_older_file(tmp_path):
    extra = (*RESILIENCE, "--log-rotation", "--stop-pause", "3_000_000_000")
    with Cluster(tmp_path, extra=extra).start() as cluster, stream(cluster, 10_000) as sender:
        cluster.wait_windows(2_000)
        run_tool("external_sender", "-e", cluster.externals[1], "-t", "rotate-log", "-m",
                 "worker-2")  # fmt: skip
        cluster.wait_for("worker-2", b"~~~Stopping message processing for log rotation.~~~")
        cluster.kill("worker-2")
        restarted = cluster.start_worker(1, *extra)
        restarted.wait_stdout(lambda o: b"Recovery COMPLETE" in o)
        finish_and_check(cluster, sender, 10_000)


def test_size_rotation_on_both_workers(tmp_path):
    """Scenario 85."""
    extra = (*RESILIENCE, "--log-rotation", "--event-log-file-size", "5000",
             "--stop-pause", "100_000_000")  # fmt: skip
    with Cluster(tmp_path, extra=extra).start() as cluster, stream(cluster, 5_000) as sender:
        for name in ("initializer", "worker-2"):
            cluster.wait_for(name, b"Steps snapshotting to new log file complete.", timeout=60)
        finish_and_check(cluster, sender, 5_000)


def test_rotation_requests_with_nothing_new_are_ignored(tmp_path):
    """Scenario 88."""
    extra = (*RESILIENCE, "--log-rotation", "--stop-pause", "0")
    with Cluster(tmp_path, extra=extra).start() as cluster:
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        for _ in range(2):
            run_tool("external_sender", "-e", cluster.externals[1], "-t", "rotate-log", "-m",
                     "worker-2")  # fmt: skip
            cluster.wait_for("worker-2", b"~~~Resuming message processing.~~~")
        cluster.wait_for("worker-2", b"Event log does not contain new data. Rotate log request "
                                     b"ignored.")  # fmt: skip


def test_files_of_another_application_are_refused_and_left_alone(tmp_path):
    """Scenario 89 on real processes: a stale directory is refused, nothing deleted."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster:
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        cluster.kill("worker-2", 15)
        cluster.kill("initializer", 15)
    files = sorted(p.name for p in tmp_path.glob("sequence_window-*"))
    # the same module name, but its key list is [0, 1, 2]: another topology
    source = APP_SOURCE.read_text()
    assert "partition_keys = [0, 1]" in source
    (tmp_path / "sequence_window.py").write_text(source.replace("[0, 1]", "[0, 1, 2]"))
    stale = run_tool("machida", *cluster.worker_args(1), cwd=tmp_path)
    assert stale.returncode == 1, stale.stderr
    assert b"belong to a different application or topology (fingerprint" in stale.stderr
    assert sorted(p.name for p in tmp_path.glob("sequence_window-*")) == files


def test_a_worker_down_holds_the_sources_back_and_gets_everything_after_restart(tmp_path):
    """Scenario 94: the backlog for a dead worker is bounded and replayed in full."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster:
        cluster.kill("worker-2")
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", "100_000", "-y",
                      "-g", "12", "-u", "-w", "-s", "1000", "-i", "0", cwd=tmp_path)  # fmt: skip
        with sender:
            # the initializer stops reading its source once 16 384 messages wait for worker-2
            cluster.wait_for("initializer", b"(backpressure: link:worker-2)", "stderr")
            cluster.start_worker(1).wait_stdout(lambda o: b"Recovery COMPLETE" in o)
            finish_and_check(cluster, sender, 100_000)


def test_sigterm_and_respawn_as_the_2017_harness_did(tmp_path):
    """Scenario 79: SIGTERM instead of kill -9; the stopped worker exits 0 and keeps its files."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(6_000)
        assert cluster.kill("worker-2", signal.SIGTERM) == 0
        assert list(tmp_path.glob("sequence_window-worker-2*.evlog"))
        restarted = cluster.start_worker(1)
        restarted.wait_stdout(lambda o: b"|~~ - Recovery COMPLETE - ~~|" in o)
        finish_and_check(cluster, sender)


def test_the_initializer_restarts_with_its_own_state(tmp_path):
    """Scenario 81: kill -9 the initializer; the test's sender reconnects and goes on."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster:
        cluster.send(3_000, *PACE)
        cluster.wait_windows(3_000)
        assert cluster.kill("initializer") == -9
        restarted = cluster.start_initializer()
        restarted.wait_stdout(lambda o: b"|~~ - Recovery COMPLETE - ~~|" in o)
        out = restarted.stdout.decode()
        assert "Recovering from recovery files!" in out and "RESILIENCE: Replayed" in out
        cluster.send(2_000, *PACE, start_from=3_000)
        wait_until(lambda: {4_999, 5_000} <= {w[-1] for w in cluster.windows()}, 60,
                   "both final windows")  # fmt: skip
        even = [w for w in cluster.windows() if w[-1] % 2 == 0]
        assert even[1500:] and all(w[0] != 0 for w in even[1500:]), even[1498:1503]
        assert cluster.validate(5_000, "-a").returncode == 0


ACCEPTED = re.compile(rb"RESILIENCE: Sequence Window source had accepted (\d+) record\(s\)")


def restart_both(cluster: Cluster) -> int:
    """Start the initializer and worker-2 again with their commands; once both have recovered,
    the number of records the source had durably accepted."""
    initializer, worker = cluster.start_initializer(), cluster.start_worker(1)
    for restarted in (initializer, worker):
        restarted.wait_stdout(lambda o: b"|~~ - Recovery COMPLETE - ~~|" in o)
    found = ACCEPTED.search(initializer.stdout)
    assert found, initializer.report()
    return int(found.group(1))


def resume_and_check(cluster: Cluster, accepted: int, count: int = STREAM) -> None:
    """What the README says to do: resume the sender after what was accepted; nothing is lost."""
    assert 0 < accepted <= count
    cluster.send(count - accepted, *PACE, start_from=accepted)
    wait_until(lambda: {count - 1, count} <= {w[-1] for w in cluster.windows()}, 60,
               "both final windows")  # fmt: skip
    verdict = cluster.validate(count, "-a")
    assert verdict.returncode == 0, verdict.stderr.decode() + cluster.report()
    assert odd_restarts(cluster.windows()) == []


def test_worker_2_then_the_initializer_crash_and_nothing_accepted_is_lost(tmp_path):
    """kill -9 worker-2; while its share waits in the initializer's backup, kill -9 the
    initializer too; restart both, resume the sender from the reported count."""
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(4_000)
        assert cluster.kill("worker-2") == -9
        cluster.wait_for("initializer", b"data link to worker-2 lost", "stderr")
        cluster.wait_windows(len(cluster.windows()) + 2_000)  # even windows go on alone
        assert cluster.kill("initializer") == -9
        assert sender.wait() != 0  # its connection broke
        resume_and_check(cluster, restart_both(cluster))


def test_both_crash_at_once_and_nothing_accepted_is_lost(tmp_path):
    with Cluster(tmp_path, extra=RESILIENCE).start() as cluster, stream(cluster) as sender:
        cluster.wait_windows(6_000)
        for proc in (cluster.procs["initializer"].proc, cluster.procs["worker-2"].proc):
            proc.send_signal(signal.SIGKILL)
        assert cluster.kill("initializer") == -9 and cluster.kill("worker-2") == -9
        assert sender.wait() != 0
        resume_and_check(cluster, restart_both(cluster))


@contextlib.contextmanager
def small_disk(path: pathlib.Path, size: str = "1m"):
    """A tmpfs of ``size`` mounted at ``path`` for the test (root only; skipped elsewhere)."""
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=True)


def test_a_full_disk_stops_a_worker_loudly_and_a_restart_loses_nothing(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        filler = disk / "filler"
        room = shutil.disk_usage(disk).free - 96 * 1024
        filler.write_bytes(b"\0" * room)  # leaves about 96 KiB for the logs
        with Cluster(disk, extra=RESILIENCE).start() as cluster, stream(cluster) as sender:

            def failed() -> list[str]:
                return [n for n, tool in cluster.procs.items() if b"ERROR: cannot" in tool.stderr]

            wait_until(failed, 60, "a worker to find the disk full")
            name = failed()[0]
            assert cluster.procs[name].wait() == 1, cluster.report()
            errors = cluster.procs[name].stderr.decode().splitlines()
            line = next(x for x in errors if x.startswith("ERROR: cannot write"))
            assert [x for x in errors if x.startswith("ERROR")] == [line], errors
            assert "Traceback" not in cluster.procs[name].stderr.decode(), errors
            assert f"{disk}/sequence_window-{name}" in line
            assert ": No space left on device; " in line
            assert f"{name} stops, without acknowledging what it could not log" in line
            assert list(disk.glob(f"sequence_window-{name}.local-topology"))  # files kept
            filler.unlink()  # make room, then start everything again with the same commands
            for other in cluster.procs:
                if cluster.procs[other].proc.poll() is None:
                    cluster.kill(other)
            sender.wait()
            resume_and_check(cluster, restart_both(cluster))


# -- Resilience on its own: worker-2's data plane, its real log files, no sockets ------------

STATE = "Sequence Window"  # sequence_window.py's state, keys [0, 1]
WORKERS = ["initializer", "worker-2"]
OWNED = 1  # worker-2 owns key index 1 (the odd values) of the two
IGNORED = "Event log does not contain new data. Rotate log request ignored."
RESUMING = "~~~Resuming message processing.~~~"


class Worker2:
    """worker-2 as ``machida`` makes it, without its sockets: its command line, its
    application, its data plane and flow control, its recovery files and event log."""

    NAME, PEER, ROLE = "worker-2", "initializer", ()

    def __init__(self, directory: pathlib.Path, *extra: str) -> None:
        nowhere = f"127.0.0.1:{closed_port()}"
        config = parse_runner_args(["machida", "--application-module", "sequence_window",
            "--in", nowhere, "--out", nowhere, "--metrics", nowhere, "--control", nowhere,
            "--name", self.NAME, "--run-with-resilience", "--resilience-dir", str(directory),
            "--stop-pause", "0", *self.ROLE, *extra])  # fmt: skip
        module, self.plan = load_plan(config.application_module, list(config.app_args))
        self.flow = FlowControl()
        self.sink: list[bytes] = []
        self.sent: list[bytes] = []  # frames to the other worker
        self.files = RecoveryFiles(str(directory), "sequence_window", self.NAME,
                                   self.NAME == "initializer")  # fmt: skip
        fingerprint = self.plan.fingerprint(True)
        decision = self.files.inspect(Expectation(fingerprint=fingerprint, resilience=True))
        self.recovering = isinstance(decision, Recover)
        self.resilience = Resilience(Settings.of(config, fingerprint), self.files, self.flow)
        self.plane = DataPlane(
            self.plan,
            self.NAME,
            serializers(module),
            self.flow,
            lambda p, data: self.sink.append(data),
            lambda peer, frame: self.sent.append(frame),
            persist=self.resilience.persist,
            commit=self.commit,
        )

    def commit(self, leaving: list) -> bool:
        self.resilience.commit(leaving)  # as the process does, but an error fails the test
        return True

    def join(self) -> Worker2:
        """What the worker does once it has the member list: topology, event log, files."""
        self.plane.build(self.plan.placement(WORKERS))
        self.resilience.open(self.plane, self.recovering)
        here = ("127.0.0.1", closed_port())
        self.files.write(RecoveryRecord(
            module="sequence_window", worker=self.NAME, fingerprint=self.plan.fingerprint(True),
            worker_count=2, workers=tuple(WORKERS), resilience=True,
            owned_keys=self.plan.placement(WORKERS).owned_by(self.NAME), control=here,
            data=here, peers={self.PEER: {"control": here, "data": here}},
        ))  # fmt: skip
        return self

    def deliver(self, value: int) -> None:
        """``value`` for worker-2's key from the initializer, applied, then the batch's flush."""
        steps = self.plan.pipelines[0].steps
        self.plane.topology.arrival(0, LocalTopology.first_state(steps))(OWNED, value)
        self.plane.flush()  # ends with the commit to the event log

    def window(self) -> list[int]:
        return self.plane.states[STATE][OWNED].window

    def logged_window(self) -> list[int] | None:
        """The window of worker-2's key in the newest snapshot of its current event log."""
        log = read_log(self.resilience.log.path, "sequence_window", "worker-2",
                       self.plan.fingerprint(True))  # fmt: skip
        data = log.snapshots.get((STATE, OWNED))
        return None if data is None else self.plane.serializers[1](data).window

    async def rotate(self) -> None:
        self.resilience.request_rotation()  # what an external RotateLog for worker-2 comes to
        await self.resilience.rotation_task

    def stop(self) -> None:
        self.resilience.close()


class Initializer(Worker2):
    """The initializer likewise: its source feeds it, and it forwards key 1's values."""

    NAME, PEER = "initializer", "worker-2"
    ROLE = ("--cluster-initializer", "--worker-count", "2", "--data", f"127.0.0.1:{closed_port()}")

    def read(self, *values: int) -> None:
        """``values`` read from the source, then the read's flush (commit, then forwards)."""
        source = self.plane.open_source(0, "sender")
        for value in values:
            source.push(value)
        self.plane.flush()

    def forwarded(self) -> list[tuple[int, int]]:
        """Each batch sent to worker-2: (first sequence number, records)."""
        events = [event for frame in self.sent for event in BoundaryDecoder().feed(frame)]
        return [(e.first, sum(len(run[4]) for run in e.runs)) for e in events
                if isinstance(e, BatchEvent)]  # fmt: skip


def test_after_a_rotation_and_a_crash_the_initializer_numbers_on_where_it_was(tmp_path):
    """A link wholly acknowledged at the rotation must not restart its numbering at 1: worker-2
    would skip those batches as already seen."""

    async def scenario() -> None:
        first = Initializer(tmp_path, "--log-rotation").join()
        first.read(*range(1, 21))
        assert first.forwarded() == [(1, 10)]
        first.plane.ack_read("worker-2", ack(10))
        await first.rotate()
        first.stop()  # a crash after the rotation: the new log is all there is
        again = Initializer(tmp_path, "--log-rotation").join()
        assert again.recovering and again.plane.incarnation == first.plane.incarnation
        again.read(21, 22, 23)
        assert again.forwarded() == [(11, 2)]
        again.stop()

    asyncio.run(scenario())


def test_a_restart_cuts_off_a_torn_commit_so_later_commits_survive(tmp_path, capsys):
    first = Worker2(tmp_path).join()
    assert not first.recovering
    first.deliver(1)
    path = first.resilience.log.path
    serialize = first.plane.serializers[0]
    torn = encode_commit([(STATE, OWNED, serialize(first.plane.states[STATE][OWNED]))], {})
    first.stop()
    with open(path, "ab") as file:
        file.write(torn[:9])  # a crash in the middle of a commit
    second = Worker2(tmp_path).join()
    assert second.recovering
    assert second.window() == [0, 0, 0, 1]
    second.deliver(3)  # logged and acknowledged upstream
    second.stop()
    capsys.readouterr()
    third = Worker2(tmp_path).join()
    assert third.window() == [0, 0, 1, 3]
    third.stop()
    out = capsys.readouterr().out.splitlines()
    replayed = [line for line in out if line.startswith("RESILIENCE:")]
    # the incarnation of the first run, then one snapshot from each of the first two runs
    assert replayed == ["RESILIENCE: Replayed 3 entries from recovery log file."]


def test_a_rotation_request_before_the_log_exists_is_ignored(tmp_path, capsys):
    worker = Worker2(tmp_path, "--log-rotation")  # not joined: no topology, no log
    worker.resilience.request_rotation()
    assert not worker.resilience.rotating
    worker.stop()
    assert capsys.readouterr().out.splitlines() == [IGNORED]


def test_a_rotation_starts_a_file_at_the_old_ones_end_and_recovers_from_it(tmp_path, capsys):
    async def scenario() -> None:
        worker = Worker2(tmp_path, "--log-rotation").join()
        worker.deliver(1)
        size = worker.resilience.log.size
        paused = []
        worker.flow._on_change = lambda flow: paused.append(flow.paused)
        await worker.rotate()
        assert paused == [True, False]  # the inputs were held during the rotation, then not
        assert "Steps snapshotting to new log file complete." in capsys.readouterr().out
        logs = [p.name for p in tmp_path.glob("*.evlog")]
        assert logs == [f"sequence_window-worker-2-{size:016x}.evlog"]
        worker.stop()
        again = Worker2(tmp_path, "--log-rotation").join()
        assert again.recovering
        assert again.resilience.log.offset == size
        assert {i: s.window for i, s in again.plane.states[STATE].items()} == {OWNED: [0, 0, 0, 1]}
        again.stop()

    asyncio.run(scenario())


def test_a_failed_rotation_resumes_and_keeps_logging_to_the_old_file(tmp_path, capsys):
    async def scenario() -> list[str]:
        worker = Worker2(tmp_path, "--log-rotation").join()
        old = worker.resilience.log
        worker.deliver(1)
        # the new file cannot be created: its directory is gone
        worker.resilience.files = RecoveryFiles(str(tmp_path / "gone"), "sequence_window",
                                                "worker-2", initializer=False)  # fmt: skip
        capsys.readouterr()
        await worker.rotate()
        lines = capsys.readouterr().out.splitlines()
        assert worker.flow.reasons == set()
        assert not worker.resilience.rotating
        assert worker.resilience.log is old
        worker.deliver(3)
        assert worker.logged_window() == [0, 0, 1, 3]
        worker.stop()
        return lines

    lines = asyncio.run(scenario())
    warnings = [line for line in lines if line.startswith("WARNING:")]
    assert len(warnings) == 1 and "event log rotation failed (FileNotFoundError" in warnings[0]
    assert lines[-1] == RESUMING


@pytest.mark.parametrize(("failure", "reported"), [
    (ValueError("not yet"), "raised ValueError: not yet"),
    (4, "serialize_once() returned int: 4"),  # not 4 zero bytes logged as the state
])  # fmt: skip
def test_a_state_that_failed_to_serialise_is_logged_by_a_later_commit(
    tmp_path, capsys, failure, reported
):
    worker = Worker2(tmp_path).join()
    plane = worker.plane
    serialize, deserialize = plane.serializers
    failed = []

    def serialize_once(state):
        if not failed:
            failed.append(state)
            if isinstance(failure, Exception):
                raise failure
            return failure
        return serialize(state)

    plane.serializers = (serialize_once, deserialize)  # the module's serialize, raising once
    worker.deliver(1)
    assert failed and worker.logged_window() is None
    plane.states[STATE][OWNED].update(3)  # changed, but without persist this time
    plane.flush()
    assert worker.logged_window() == [0, 0, 1, 3]
    assert plane.callbacks.counters  # the failure was reported
    worker.stop()
    assert reported in capsys.readouterr().err
