"""How machida-flink stops: signals, a full disk, and strangers on the ingress's serve port.

Real ``machida-flink`` processes with their embedded MiniCluster. A first
SIGTERM drains the job as ``cluster_shutdown`` does (exit 0, files removed),
even before the job is ready; a second one exits at once with status 1.
"""

from __future__ import annotations

import re
import shutil
import signal
import socket
from pathlib import Path

import pytest
from flinkhelp import (
    START_S,
    FlinkProcess,
    closed_port,
    lines,
    receiver,
    send,
    u64_frames,
    wait_lines,
)
from test_resilience import small_disk

from machida.testing import run
from machida_flink import ingress_log as log

ROOT = Path(__file__).resolve().parent.parent


def flink(tmp_path: Path, *extra: str, out: str | None = None) -> tuple[FlinkProcess, int]:
    in_port = closed_port()
    process = FlinkProcess(
        "--application-module", "sequence_window", "--in", f"127.0.0.1:{in_port}",
        "--out", out or f"127.0.0.1:{closed_port()}", "--external",
        f"127.0.0.1:{closed_port()}", "--resilience-dir", str(tmp_path), *extra, cwd=ROOT,
    )  # fmt: skip
    return process, in_port


def stranger_reads(port: int) -> bytes:
    """Connect to the serve port as someone without the token; what comes back."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(log.SUBSCRIBE_REQUEST.pack(log.SUBSCRIBE, 0, 0, bytes(log.TOKEN_SIZE)))
        got = b""
        while chunk := sock.recv(4096):
            got += chunk
        return got


@pytest.mark.timeout(400)
def test_sigterm_drains_like_cluster_shutdown_and_a_stranger_reads_nothing(tmp_path):
    values = list(range(1, 1001))
    expected = len(run("sequence_window", values, workers=2))
    recv, out = receiver(tmp_path)
    serve = closed_port()
    process, in_port = flink(tmp_path, "--ingress", f"127.0.0.1:{serve}", out=out)
    with recv, process:
        process.wait_ready()
        assert stranger_reads(serve) == b""
        process.wait_stderr(lambda err: b"no subscription with this run's token" in err)
        send(in_port, u64_frames(values))
        wait_lines(recv, 1)
        process.proc.send_signal(signal.SIGTERM)
        assert process.wait(START_S) == 0, process.report()
        assert recv.stop() == 0
    assert len(lines(recv)) == expected, process.report()
    out_text = process.stdout.decode()
    for line in (
        "SIGTERM received: clean shutdown",
        "Flink job: FINISHED",
        "Recovery files removed.",
        "Connections: Finished shutdown procedure.",
    ):
        assert line in out_text, process.report()
    err = process.stderr.decode()
    assert re.search(r"^ERROR: ingress connection from 127\.0\.0\.1:\d+: no subscription with "
                     r"this run's token; connection closed$", err, re.M), err  # fmt: skip
    assert "Traceback" not in err, err
    assert not list(tmp_path.glob("sequence_window-*")), "recovery files left behind"


@pytest.mark.timeout(400)
def test_a_signal_before_the_job_is_ready_drains_it(tmp_path):
    process, _ = flink(tmp_path)
    with process:
        process.wait_stdout(lambda out: b"external: listening on" in out, START_S)
        process.proc.send_signal(signal.SIGTERM)  # while the JVM starts and the job is submitted
        assert process.wait(START_S) == 0, process.report()
    out_text = process.stdout.decode()
    assert "SIGTERM received: clean shutdown" in out_text, process.report()
    assert "Flink job: FINISHED" in out_text, process.report()
    assert "source listening" not in out_text, "senders accepted after the signal"
    assert "Application has successfully initialized." not in out_text, process.report()
    assert not list(tmp_path.glob("sequence_window-*")), "recovery files left behind"


def test_a_second_signal_exits_at_once_with_status_1(tmp_path):
    process, _ = flink(tmp_path)
    with process:
        process.wait_stdout(lambda out: b"external: listening on" in out, START_S)
        process.proc.send_signal(signal.SIGTERM)
        process.wait_stdout(lambda out: b"SIGTERM received" in out, START_S)
        process.proc.send_signal(signal.SIGTERM)
        assert process.wait(60) == 1, process.report()
    err = process.stderr.decode()
    assert "ERROR: second SIGTERM: exiting without draining" in err, process.report()
    assert "Traceback" not in err, process.report()
    assert not (tmp_path / "sequence_window-initializer-flink.lock").exists()


@pytest.mark.timeout(400)
def test_a_full_disk_stops_accepting_with_one_line_and_exits_1(tmp_path):
    with small_disk(tmp_path / "disk", "2m") as disk:
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 256 * 1024))
        recv, out = receiver(tmp_path)  # a sink that takes the output: the drain ends at once
        process, in_port = flink(disk, out=out)
        with recv, process:
            process.wait_ready()
            with socket.create_connection(("127.0.0.1", in_port), timeout=30) as sock:
                try:  # 1.2 MB into 256 KB: the ingress closes the connection
                    for start in range(0, 100_000, 1000):
                        sock.sendall(u64_frames(range(start, start + 1000)))
                    while sock.recv(4096):
                        pass
                except ConnectionError:
                    pass
            assert process.wait(START_S) == 1, process.report()
        err = process.stderr.decode()
        stream = disk / "sequence_window-initializer-flink-0.ingress"
        assert re.search(rf"^ERROR: cannot write {re.escape(str(stream))}: No space left on "
                         rf"device; the ingress stops accepting input", err, re.M), err  # fmt: skip
        assert "Traceback" not in err, err
