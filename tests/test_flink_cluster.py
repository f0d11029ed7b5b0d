"""machida-flink on a real standalone session cluster: a JobManager and two TaskManagers,
each its own JVM, started by ``python -m machida_flink.cluster`` (what ``make
flink-cluster`` runs). One cluster for the module; ``kill -9`` of a TaskManager
mid-stream must leave the output passing ``validator -a``, with both final
windows and no key falling back to its initial window.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from flinkhelp import FLOW_S, FlinkProcess, closed_port, lines, receiver, shutdown, wait_lines
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
        wait_until(lambda: finals_arrived(lines(recv), total), FLOW_S, "both final windows")
        assert shutdown(flink, external) == 0, flink.report()
    assert b"Flink job: RESTARTING" in flink.stdout, flink.report()
    received = tmp_path / "received.txt"
    received.write_bytes(recv.stdout)
    verdict = run_tool("validator", "-a", "-e", str(total), "-i", str(received))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr
    restarts = [w for w in lines(recv) if w.startswith(b"[0,0,0,")]
    assert sorted(restarts) == [b"[0,0,0,1]", b"[0,0,0,2]"], "a key fell back to its first window"


def finals_arrived(got: list[bytes], total: int) -> bool:
    finals = {f"[{total - 7},{total - 5},{total - 3},{total - 1}]".encode(),
              f"[{total - 6},{total - 4},{total - 2},{total}]".encode()}  # fmt: skip
    return finals <= set(got)
