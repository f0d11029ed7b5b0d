"""A machida-flink run that changes size, stops for a savepoint and survives its own crash.

Real machida-flink processes with their embedded MiniCluster, the project's
sender, data_receiver, external_sender, cluster_shutdown and validator. A
rescale must lose and restart nothing (every key goes on from its state at the
new parallelism, the sender stays connected); a kill -9 of the whole process
tree, then the same command, must lose nothing the run accepted; a savepoint
must let a later run at another parallelism continue the windows exactly.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from flinkhelp import (
    FLOW_S,
    START_S,
    FlinkProcess,
    closed_port,
    finals,
    kill_tree,
    lines,
    paced_sender,
    receiver,
    send,
    shutdown,
    u64_frames,
    wait_lines,
)
from toolhelp import run_tool, wait_until

ROOT = Path(__file__).resolve().parent.parent
ACCEPTED = re.compile(rb"RESILIENCE: Sequence Window source had accepted (\d+) record\(s\)")


def flink_args(tmp_path: Path, in_port: int, out: str, external: str) -> tuple[str, ...]:
    return ("--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
            "--out", out, "--external", external, "--resilience-dir", str(tmp_path))  # fmt: skip


def validate(tmp_path: Path, recv, total: int, *flags: str) -> None:
    received = tmp_path / "received.txt"
    received.write_bytes(recv.stdout)
    verdict = run_tool("validator", *flags, "-e", str(total), "-i", str(received))
    assert verdict.returncode == 0, verdict.stdout + verdict.stderr


def first_windows_only(got: list[bytes]) -> None:
    """No key fell back to its initial state: [0,0,0,x] only for each key's first value."""
    restarts = sorted(w for w in got if w.startswith(b"[0,0,0,"))
    assert restarts == [b"[0,0,0,1]", b"[0,0,0,2]"], restarts


def rescale(external: str, parallelism: int | str) -> None:
    result = run_tool("external_sender", "-e", external, "-t", "rescale", "-m", str(parallelism))
    assert result.returncode == 0, result.stderr


@pytest.mark.timeout(400)
def test_a_paced_stream_rescaled_from_2_to_3_to_1_loses_and_restarts_nothing(tmp_path):
    total = 20_000
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    args = flink_args(tmp_path, in_port, out, external)
    with recv, FlinkProcess(*args, "--parallelism", "2", cwd=ROOT) as flink:
        flink.wait_ready()
        sender = paced_sender(in_port, total, 50)  # 1,000 values a second
        for wrong in ("three", "129"):
            rescale(external, wrong)
        rescale(external, 2)
        flink.wait_stdout(lambda out: b"Flink job: already at parallelism 2" in out)
        wait_lines(recv, 3_000)
        rescale(external, 3)
        flink.wait_stdout(lambda out: out.count(b"Flink job: RUNNING") >= 2, FLOW_S)
        wait_lines(recv, len(lines(recv)) + 1_000)  # the job at 3 goes on with the stream
        assert sender.poll() is None, "the stream ended before the second rescale"
        rescale(external, 1)
        flink.wait_stdout(lambda out: out.count(b"Flink job: RUNNING") >= 3, FLOW_S)
        assert sender.wait(FLOW_S) == 0, sender.stderr.read()  # connected throughout
        wait_until(lambda: finals(total) <= set(lines(recv)), FLOW_S, "both final windows")
        assert shutdown(flink, external) == 0, flink.report()
    out = flink.stdout.decode()
    steps = ["2 worker topology", "Flink job: RUNNING", "Flink job: rescaling to 3",
             "3 worker topology", "Flink job: RUNNING", "Flink job: rescaling to 1",
             "Single worker topology", "Flink job: RUNNING", "Flink job: FINISHED"]  # fmt: skip
    at = 0
    for step in steps:
        at = out.find(step, at)
        assert at >= 0, f"{step!r} missing or out of order\n{flink.report()}"
    err = flink.stderr.decode()
    for wrong in ("three", "129"):
        assert (f"ERROR: rescale: expected a parallelism from 1 to 128 (the max parallelism), "
                f"got {wrong!r}; nothing changes\n") in err, err  # fmt: skip
    assert "Traceback" not in err, flink.report()
    validate(tmp_path, recv, total, "-a")
    first_windows_only(lines(recv))
    assert not list(tmp_path.glob("sequence_window-*")), "the run's files were left behind"


@pytest.mark.timeout(400)
def test_kill_9_of_the_process_tree_then_the_same_command_loses_nothing(tmp_path):
    total = 100_000
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    args = (*flink_args(tmp_path, in_port, out, external), "--parallelism", "2")
    with recv:
        with FlinkProcess(*args, cwd=ROOT) as crashed:
            crashed.wait_ready()
            sender = paced_sender(in_port, total, 500)  # 10,000 values a second
            wait_lines(recv, total // 2)
            seen = len(lines(recv))
            assert len(kill_tree(crashed)) >= 2, "no JVM under machida-flink"
            assert crashed.wait() == -9
            assert sender.wait(FLOW_S) != 0  # its connection broke
        with FlinkProcess(*args, cwd=ROOT) as resumed:
            resumed.wait_ready()
            found = ACCEPTED.search(resumed.stdout)
            assert found, resumed.report()
            accepted = int(found.group(1))
            assert seen <= accepted < total, (seen, accepted)
            rest = paced_sender(in_port, total - accepted, 500, start_from=accepted)
            assert rest.wait(FLOW_S) == 0, rest.stderr.read()
            wait_until(lambda: finals(total) <= set(lines(recv)), FLOW_S, "both final windows")
            assert shutdown(resumed, external) == 0, resumed.report()
    out = resumed.stdout.decode()
    assert "Recovering from recovery files!" in out and "Recovery COMPLETE" in out, out
    assert re.search(r"parallelism 2, from .*/chk-\d+\n", out), resumed.report()
    assert "Traceback" not in resumed.stderr.decode(), resumed.report()
    validate(tmp_path, recv, total, "-a")
    first_windows_only(lines(recv))


@pytest.mark.timeout(400)
def test_a_savepoint_then_another_parallelism_continues_the_windows_exactly(tmp_path):
    recv, out = receiver(tmp_path)
    in_port, external = closed_port(), f"127.0.0.1:{closed_port()}"
    args = flink_args(tmp_path, in_port, out, external)
    with recv:
        with FlinkProcess(*args, "--parallelism", "2", cwd=ROOT) as first:
            first.wait_ready()
            send(in_port, u64_frames(range(1, 5_001)))
            wait_lines(recv, 5_000)
            result = run_tool("external_sender", "-e", external, "-t", "savepoint")
            assert result.returncode == 0, result.stderr
            assert first.wait(START_S) == 0, first.report()
        found = re.search(rb"^Savepoint completed\. Path: (.+)$", first.stdout, re.M)
        assert found, first.report()
        savepoint = Path(found.group(1).decode())
        assert sorted(p.name for p in savepoint.iterdir()) == ["_metadata", "machida-flink.json"]
        assert [p.name for p in tmp_path.glob("sequence_window-*")] == [
            "sequence_window-initializer-savepoints"
        ], "the run's own files were left behind"
        with FlinkProcess(*args, "--from-savepoint", str(savepoint), "--parallelism", "3",
                          cwd=ROOT) as second:  # fmt: skip
            second.wait_ready()
            assert b"3 worker topology" in second.stdout, second.report()
            assert ACCEPTED.search(second.stdout).group(1) == b"5000", second.report()
            send(in_port, u64_frames(range(5_001, 10_001)))
            wait_lines(recv, 10_000)
            assert shutdown(second, external) == 0, second.report()
        assert recv.stop() == 0
    validate(tmp_path, recv, 10_000)  # strict: nothing repeated, every window in series
    assert len(lines(recv)) == 10_000
    assert (savepoint / "_metadata").exists(), "a user's savepoint outlives the run"
