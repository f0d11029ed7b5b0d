"""machida-flink's command line: what it refuses before any JVM starts, with machida's words."""

from __future__ import annotations

import fcntl
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from toolhelp import closed_port

ROOT = Path(__file__).resolve().parent.parent


def machida_flink(*args: str, cwd=ROOT, env=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machida_flink", *args], cwd=cwd, capture_output=True, text=True,
        timeout=60, env={**os.environ, **(env or {})},
    )  # fmt: skip


def explain(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"


def test_help_exits_0_and_lists_flinks_flags():
    result = machida_flink("--help")
    assert result.returncode == 0
    assert "--parallelism" in result.stdout and "--jobmanager" in result.stdout


def test_a_missing_module_is_reported_as_machida_does(tmp_path):
    result = machida_flink("--application-module", "no_such_module", "--resilience-dir",
                           str(tmp_path))  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "Could not load module 'no_such_module'" in result.stderr
    assert "Something went wrong" not in result.stderr


def test_a_build_error_is_reported_as_machida_does(tmp_path):
    result = machida_flink("--application-module", "sequence_window", "--resilience-dir",
                           str(tmp_path))  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "tcp_parse_input_addrs: args contain no --in/-i option" in result.stderr
    assert result.stderr.rstrip().endswith("Something went wrong while building the application")


@pytest.mark.parametrize("flag", ["--in", "--external", "--ingress"])
def test_an_address_that_cannot_listen_is_one_line_and_leaves_nothing(tmp_path, flag):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        addresses = {flag: f"127.0.0.1:{closed_port()}" for flag in ("--in", "--external")}
        addresses[flag] = f"127.0.0.1:{port}"
        result = machida_flink(
            "--application-module", "sequence_window", "--out", f"127.0.0.1:{closed_port()}",
            "--resilience-dir", str(tmp_path), *(w for pair in addresses.items() for w in pair),
            env={"TMPDIR": str(scratch)},
        )  # fmt: skip
    assert result.returncode == 1, explain(result)
    what = {
        "--in": "Sequence Window source is unable to listen on",
        "--external": "unable to listen on",
        "--ingress": "unable to listen on",
    }[flag]
    line = f"Error: {what} 127.0.0.1:{port}"
    assert result.stderr.startswith(line) and result.stderr.count("\n") == 1, explain(result)
    assert result.stderr.rstrip().endswith(": Address already in use"), explain(result)
    assert "Flink job" not in result.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tmp"], "files left behind"
    assert not list(scratch.iterdir()), "scratch directory left behind"


def test_a_second_run_with_the_same_module_and_name_is_refused(tmp_path):
    lock = tmp_path / "sequence_window-initializer-flink.lock"
    with open(lock, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
        result = machida_flink(
            "--application-module", "sequence_window", "--in", f"127.0.0.1:{closed_port()}",
            "--out", f"127.0.0.1:{closed_port()}", "--resilience-dir", str(tmp_path),
        )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert result.stderr == (
        f"Error: another machida-flink run uses {lock} (same module and --name in {tmp_path}); "
        f"give this one another --name or --resilience-dir\n"
    ), explain(result)
    assert "source listening" not in result.stdout


def test_states_feeding_each_other_are_refused(make_app, tmp_path):
    app = make_app(
        """
        import wallaroo
        from sequence_window import Decoder, Encoder, SequencePartitionFunction as P
        from sequence_window import ObserveNewValue as C, SequenceWindowStateBuilder as B

        def application_setup(args):
            ab = wallaroo.ApplicationBuilder("loop")
            ab.new_pipeline("one", wallaroo.TCPSourceConfig("127.0.0.1", "0", Decoder()))
            ab.to_state_partition(C(), B(), "A", P(), [0, 1])
            ab.to_state_partition(C(), B(), "B", P(), [0, 1]).done()
            ab.new_pipeline("two", wallaroo.TCPSourceConfig("127.0.0.1", "0", Decoder()))
            ab.to_state_partition(C(), B(), "B", P(), [0, 1])
            ab.to_state_partition(C(), B(), "A", P(), [0, 1]).done()
            return ab.build()
        """
    )
    result = machida_flink("--application-module", app, "--resilience-dir", str(tmp_path),
                           cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "states 'A' -> 'B' -> 'A' feed each other" in result.stderr, explain(result)
