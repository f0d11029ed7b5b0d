"""A worker's event log stays bounded without being told: compacted past --event-log-limit.

First worker-2 and the initializer as ``machida`` makes them, their logs on real files (no
sockets): the compacted log replaces the old one under its name, holds what recovery needs
(states, origins, the upstream backup, the exactly-once sink backlog and numbering), and a crash
in the middle of a compaction leaves the old log whole. Then a real resilient cluster with a
small limit over 1,000,000 values: its resilience directory stays under the limit plus one
snapshot per worker, and a kill -9 still recovers.
"""

from __future__ import annotations

import asyncio
import os
import re
import threading

from clusterhelp import Cluster
from test_exactly_once_plane import Receiver, Worker, windows
from test_resilience import Initializer, Worker2, odd_restarts
from toolhelp import Tool

from machida.wire.boundary import ack

LIMIT = 4096
COMPACTED = re.compile(r"Event log compacted: (\d+) -> (\d+) bytes \(--event-log-limit 4096\)")


def test_past_the_limit_the_log_is_compacted_in_place_and_recovers(tmp_path, capsys):
    worker = Worker2(tmp_path, "--event-log-limit", str(LIMIT)).join()
    path = worker.resilience.log.path
    sizes = []
    for value in range(1, 400, 2):
        worker.deliver(value)
        sizes.append(os.path.getsize(path))
    worker.stop()
    compactions = COMPACTED.findall(capsys.readouterr().out)
    assert len(compactions) >= 3
    biggest_commit = max(b - a for a, b in zip(sizes, sizes[1:]) if b > a)
    assert max(sizes) <= LIMIT + biggest_commit
    assert all(int(before) > LIMIT and int(after) < LIMIT for before, after in compactions)
    assert sorted(p.name for p in tmp_path.glob("*.evlog*")) == ["sequence_window-worker-2.evlog"]
    again = Worker2(tmp_path, "--event-log-limit", str(LIMIT)).join()
    assert again.recovering and again.window() == [393, 395, 397, 399]
    again.stop()


def test_a_crash_in_the_middle_of_a_compaction_leaves_the_old_log_in_use(tmp_path):
    worker = Worker2(tmp_path).join()
    worker.deliver(1)
    worker.stop()
    path = worker.resilience.log.path
    with open(path + ".tmp", "wb") as half:  # a compaction's new file, cut short by the crash
        half.write(b"machida-evlog 2 {")
    again = Worker2(tmp_path).join()
    assert again.window() == [0, 0, 0, 1]
    assert not os.path.exists(path + ".tmp")
    again.stop()


def test_a_compacted_initializer_keeps_its_backup_and_numbers_on(tmp_path, capsys):
    first = Initializer(tmp_path, "--event-log-limit", str(LIMIT)).join()
    first.read(*range(1, 3001))
    first.plane.ack_read("worker-2", ack(1000))
    first.read(3003, 3004)  # this commit logs the ack (12k+1 and 12k+2 wait for 12k+3)
    assert COMPACTED.search(capsys.readouterr().out)
    unacked, (last, records) = first.plane.unacked("worker-2"), first.forwarded()[-1]
    assert unacked > 500
    first.stop()
    again = Initializer(tmp_path, "--event-log-limit", str(LIMIT)).join()
    again.sent.clear()
    again.plane.boundary_opened("worker-2")  # what it sends once the link is up again
    assert again.plane.unacked("worker-2") == unacked  # the backup after 1000, whole
    again.read(3005, 3006)
    assert again.forwarded()[-1] == (last + records, 1)
    again.stop()


def test_with_log_rotation_and_no_file_size_the_limit_rotates(tmp_path, capsys):
    async def scenario() -> None:
        worker = Worker2(tmp_path, "--log-rotation", "--event-log-limit", str(LIMIT)).join()
        for value in range(1, 120, 2):
            worker.deliver(value)
        if worker.resilience.rotation_task is not None:
            await worker.resilience.rotation_task
        worker.stop()

    asyncio.run(scenario())
    out = capsys.readouterr().out
    assert "Starting event log rotation." in out and "compacted" not in out
    assert len(list(tmp_path.glob("sequence_window-worker-2-*.evlog"))) == 1


def test_a_compacted_exactly_once_log_keeps_the_output_not_acknowledged(tmp_path):
    worker, receiver = Worker(tmp_path, "--event-log-limit", str(LIMIT)).join(), Receiver(tmp_path)
    conn = receiver.connect(worker)
    values = list(range(1, 300, 2))
    for value in values[:-1]:
        worker.deliver(value)
        receiver.take(conn, worker.written())
        receiver.commit()
        receiver.acknowledge(conn, worker)
    worker.deliver(values[-1])  # logged, written, lost with the crash
    worker.resilience.compact()  # a compaction after it: the output must be in the new file
    worker.stop()
    again = Worker(tmp_path, "--event-log-limit", str(LIMIT)).join()
    receiver.acknowledge(receiver.connect(again), again)
    receiver.commit()
    assert receiver.windows() == windows(*values)
    assert again.plane.stream_counters()[(0, 1)][1] == len(values)
    again.stop()


# -- a real cluster, 1,000,000 values ----------------------------------------------------------

CLUSTER_LIMIT = 256 * 1024
N = 1_000_000


class DirectoryWatch:
    """Samples each worker's files in the resilience directory until stopped: the largest
    total seen, per worker."""

    def __init__(self, directory) -> None:
        self.directory = directory
        self.largest: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            sizes: dict[str, int] = {}
            for entry in os.scandir(self.directory):
                if entry.name.startswith("sequence_window-"):
                    worker = entry.name.split(".")[0].removeprefix("sequence_window-")
                    try:
                        sizes[worker] = sizes.get(worker, 0) + entry.stat().st_size
                    except FileNotFoundError:
                        continue  # renamed or removed between the listing and the stat
            for worker, size in sizes.items():
                self.largest[worker] = max(self.largest.get(worker, 0), size)

    def stop(self) -> dict[str, int]:
        self._stop.set()
        self._thread.join()
        return self.largest


def test_a_million_values_keep_the_directory_under_the_limit_and_a_kill_9_recovers(tmp_path):
    extra = ("--run-with-resilience", "--event-log-limit", str(CLUSTER_LIMIT))
    with Cluster(tmp_path, extra=extra).start() as cluster:
        watch = DirectoryWatch(tmp_path)
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(N), "-y", "-g",
                      "12", "-u", "-w", "-s", "1000", "-i", "0", cwd=tmp_path)  # fmt: skip
        with sender:
            cluster.wait_windows(N // 2, 120)
            assert cluster.kill("worker-2") == -9
            restarted = cluster.start_worker(1)
            restarted.wait_stdout(lambda out: b"|~~ - Recovery COMPLETE - ~~|" in out)
            assert sender.wait(120) == 0, sender.report()
        cluster.wait_windows(N, 120)  # at least (a window may repeat after the crash) ...
        ends = [f",{N - 1}]".encode(), f",{N}]".encode()]
        cluster.receiver.wait_stdout(lambda out: all(end in out for end in ends), 60)
        largest = watch.stop()
        out = b"".join(tool.stdout for tool in cluster.procs.values()).decode()
        snapshots = [int(after) for _, after in re.findall(r"compacted: (\d+) -> (\d+)", out)]
        assert snapshots, cluster.report()  # the limit was reached
        # the log compacts past the limit and past twice its starting size (a snapshot); the
        # new snapshot is written beside it; one commit may cross the mark
        bound = max(CLUSTER_LIMIT, 2 * max(snapshots)) + max(snapshots) + 64 * 1024
        for worker, size in largest.items():
            assert size <= bound, (worker, largest, snapshots)
        verdict = cluster.validate(N, "-a")
        assert verdict.returncode == 0, verdict.stderr.decode() + cluster.report()
        assert odd_restarts(cluster.windows()) == []
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
