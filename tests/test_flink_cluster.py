"""machida-flink on a real standalone session cluster: a JobManager and two TaskManagers,
each its own JVM, started by ``python -m machida_flink.cluster`` (what ``make
flink-cluster`` runs). One cluster for the module; ``kill -9`` of a TaskManager
mid-stream must leave the output passing ``validator -a``, with both final
windows and no key falling back to its initial window; a rescale beyond the
cluster's task slots is refused with one line, and one onto a TaskManager added
with ``python -m machida_flink.cluster add`` (``make flink-cluster-add``) loses
nothing.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from flinkhelp import (
    FLOW_S,
    FlinkProcess,
    closed_port,
    finals,
    lines,
    paced_sender,
    receiver,
    shutdown,
    wait_lines,
)
from toolhelp import run_tool, wait_until

from machida_flink import cluster

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def session_cluster(tmp_path_factory):
    directory = tmp_path_factory.mktemp("flink-cluster")
    rest = closed_port()
    started = subprocess.run(
        [sys.executable, "-m", "machida_flink.cluster", "start", "--dir", str(directory),
         "--taskmanagers", "2", "--slots", "2", "--rest-port", str(rest),
         "--rpc-port", str(closed_port())],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        assert f"--jobmanager 127.0.0.1:{rest}" in started.stdout
        yield directory, rest
    finally:
        pids = cluster.pids(directory, "taskexecutor") + cluster.pids(
            directory, "standalonesession"
        )
        subprocess.run(
            [sys.executable, "-m", "machida_flink.cluster", "stop", "--dir", str(directory)],
            capture_output=True, timeout=120,
        )  # fmt: skip
        for pid in pids:  # a process of ours the stop script missed
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.mark.timeout(600)
def test_kill_9_of_a_taskmanager_loses_nothing(session_cluster, tmp_path):
    directory, rest = session_cluster
    managers = cluster.pids(directory, "taskexecutor")
    assert len(managers) == 2
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    total = 20_000
    with recv, FlinkProcess(
        "--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
        "--out", out, "--external", external, "--resilience-dir", str(tmp_path),
        "--parallelism", "2", "--jobmanager", f"127.0.0.1:{rest}", cwd=ROOT,
    ) as flink:  # fmt: skip
        flink.wait_ready()
        assert b"submitted to jobmanager" in flink.stdout
        used = [tm["slotsNumber"] - tm["freeSlots"] for tm in cluster.taskmanagers(rest)]
        assert used == [1, 1], f"the job's two slots are not on both TaskManagers: {used}"
        sender = subprocess.Popen(
            [sys.executable, "-m", "wallaroo_tools.sender", "-h", f"127.0.0.1:{in_port}",
             "-m", str(total), "-y", "-g", "12", "-u", "-w", "-s", "100", "-i", "50_000_000"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=tmp_path,
        )  # fmt: skip
        # a few checkpoints (1 s apart) into the stream, then one TaskManager dies
        wait_lines(recv, 4000)
        os.kill(managers[1], signal.SIGKILL)
        flink.wait_stdout(lambda o: o.count(b"Flink job: RUNNING") >= 2, FLOW_S)
        assert sender.wait(FLOW_S) == 0, sender.stderr.read()
        wait_until(lambda: finals(total) <= set(lines(recv)), FLOW_S, "both final windows")
        assert shutdown(flink, external) == 0, flink.report()
    assert b"Flink job: RESTARTING" in flink.stdout, flink.report()
    received = tmp_path / "received.txt"
    received.write_bytes(recv.stdout)
    verdict = run_tool("validator", "-a", "-e", str(total), "-i", str(received))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    restarts = [w for w in lines(recv) if w.startswith(b"[0,0,0,")]
    assert sorted(restarts) == [b"[0,0,0,1]", b"[0,0,0,2]"], "a key fell back to its first window"


@pytest.mark.timeout(600)
def test_a_rescale_waits_for_task_slots_and_uses_an_added_taskmanager(session_cluster, tmp_path):
    directory, rest = session_cluster
    added = subprocess.run(
        [sys.executable, "-m", "machida_flink.cluster", "add", "--dir", str(directory)],
        capture_output=True, text=True, timeout=180,
    )  # fmt: skip
    assert added.returncode == 0, added.stdout + added.stderr
    assert "TaskManager(s)" in added.stdout
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    total = 20_000
    with recv, FlinkProcess(
        "--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
        "--out", out, "--external", external, "--resilience-dir", str(tmp_path),
        "--parallelism", "2", "--jobmanager", f"127.0.0.1:{rest}", cwd=ROOT,
    ) as flink:  # fmt: skip
        flink.wait_ready()
        sender = paced_sender(in_port, total, 50)
        wait_lines(recv, 2_000)
        too_many = cluster.overview(rest)["slots-available"] + 2 + 1
        rescale(external, too_many)
        refused = flink.wait_stderr(lambda err: b"ERROR: rescale to" in err).decode()
        assert re.search(rf"^ERROR: rescale to {too_many}: the Flink cluster at 127\.0\.0\.1:"
                         rf"{rest} has \d+ free task slot\(s\) and the job holds 2; start more "
                         rf"TaskManagers \(make flink-cluster-add\), then ask again; the job "
                         rf"goes on at parallelism 2$", refused, re.M), refused  # fmt: skip
        rescale(external, 3)
        flink.wait_stdout(lambda o: o.count(b"Flink job: RUNNING") >= 2, FLOW_S)
        wait_until(lambda: used_slots(rest) == 3, FLOW_S, "the job at 3 to hold 3 task slots")
        assert sender.wait(FLOW_S) == 0, sender.stderr.read()
        wait_until(lambda: finals(total) <= set(lines(recv)), FLOW_S, "both final windows")
        assert shutdown(flink, external) == 0, flink.report()
    assert flink.stdout.count(b"submitted to jobmanager") == 2, flink.report()
    assert b"rescaling to " + str(too_many).encode() not in flink.stdout
    received = tmp_path / "received.txt"
    received.write_bytes(recv.stdout)
    verdict = run_tool("validator", "-a", "-e", str(total), "-i", str(received))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    restarts = [w for w in lines(recv) if w.startswith(b"[0,0,0,")]
    assert sorted(restarts) == [b"[0,0,0,1]", b"[0,0,0,2]"], "a key fell back to its first window"


def used_slots(rest: int) -> int:
    return sum(tm["slotsNumber"] - tm["freeSlots"] for tm in cluster.taskmanagers(rest))


def rescale(external: str, parallelism: int) -> None:
    result = run_tool("external_sender", "-e", external, "-t", "rescale", "-m", str(parallelism))
    assert result.returncode == 0, result.stderr
