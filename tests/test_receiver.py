"""receiver (giles receiver, 2017): flags, the received.txt layout, --expect, stopping.

Every test starts ``python -m wallaroo_tools.receiver`` on a free loopback port
in the test's directory, waits for ``Listening for data`` and talks to it over
real sockets (tools.md §6). Waits are on printed lines or the process
exiting, against a deadline.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import struct
import time

import pytest
from clusterhelp import Cluster
from toolhelp import Tool, closed_port, explain, run_tool

from machida.testing import run as drive
from wallaroo_tools.layouts import GILES, records

LISTENING = b"Listening for data\n"
USAGE = "Usage: receiver --listen HOST:PORT"


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def giles_records(data: bytes) -> list[tuple[int, bytes]]:
    return list(records(data, GILES))


def start(tmp_path, *args: str) -> tuple[Tool, int]:
    port = closed_port()
    tool = Tool("receiver", "--ponythreads=1", "--ponynoblock", "-l", f"127.0.0.1:{port}",
                *args, cwd=tmp_path)  # fmt: skip
    tool.wait_stdout(lambda out: LISTENING in out)
    return tool, port


def send(port: int, data: bytes) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
        client.sendall(data)


def test_each_frame_is_a_record_with_its_wall_clock_time(tmp_path):
    bodies = [b"abcdefghij", b"", b"[0,0,0,1]", bytes(range(256))]
    before = time.time_ns()
    tool, port = start(tmp_path, "--expect", str(len(bodies)))
    with tool:
        whole = b"".join(frame(b) for b in bodies)
        with socket.create_connection(("127.0.0.1", port), timeout=30) as client:
            for i in range(0, len(whole), 7):  # frames cut anywhere across writes
                client.sendall(whole[i : i + 7])
        assert tool.wait() == 0, tool.report()
    after = time.time_ns()
    data = (tmp_path / "received.txt").read_bytes()
    got = giles_records(data)
    assert [body for _, body in got] == bodies
    assert all(before <= ts <= after for ts, _ in got), (before, got, after)
    # u32be(body length, without the 8 timestamp bytes) | u64be(ts) | body
    assert data[:4] == b"\x00\x00\x00\x0a" and data[12:22] == b"abcdefghij"
    assert tool.stdout == LISTENING + b"4 expected messages received. Terminating...\n"


def test_expect_keeps_exactly_n_records_even_when_more_come_in_the_same_read(tmp_path):
    tool, port = start(tmp_path, "-e", "3")
    with tool:
        send(port, b"".join(frame(b"m%d" % i) for i in range(10)))
        assert tool.wait() == 0, tool.report()
    got = giles_records((tmp_path / "received.txt").read_bytes())
    assert [body for _, body in got] == [b"m0", b"m1", b"m2"]
    assert b"3 expected messages received. Terminating..." in tool.stdout


def test_any_number_of_connections_each_framed_on_its_own(tmp_path):
    tool, port = start(tmp_path, "-e", "5")
    with tool:
        a = socket.create_connection(("127.0.0.1", port), timeout=30)
        b = socket.create_connection(("127.0.0.1", port), timeout=30)
        with a, b:
            a.sendall(frame(b"a1") + frame(b"a2")[:3])  # a's second frame is cut ...
            b.sendall(frame(b"b1") + frame(b"b2") + frame(b"b3"))
            a.sendall(frame(b"a2")[3:])  # ... and completed after b's frames
        assert tool.wait() == 0, tool.report()
    bodies = [body for _, body in giles_records((tmp_path / "received.txt").read_bytes())]
    assert sorted(bodies) == [b"a1", b"a2", b"b1", b"b2", b"b3"]
    assert [x for x in bodies if x[:1] == b"a"] == [b"a1", b"a2"]
    assert [x for x in bodies if x[:1] == b"b"] == [b"b1", b"b2", b"b3"]


def test_the_file_of_a_sequence_window_run_passes_the_validator(tmp_path):
    # What sequence_window's encoder writes for 1..100, the two parities on two
    # connections as two workers would send them.
    out = drive("sequence_window", range(1, 101), workers=2)
    tool, port = start(tmp_path, "-e", "100")
    with tool:
        a = socket.create_connection(("127.0.0.1", port), timeout=30)
        b = socket.create_connection(("127.0.0.1", port), timeout=30)
        with a, b:
            for data in out:
                (a if data[-2] in b"02468" else b).sendall(data)  # by parity
        assert tool.wait() == 0, tool.report()
    result = run_tool("validator", "-e", "100", "-i", str(tmp_path / "received.txt"))
    assert result.returncode == 0, explain(result)
    assert result.stdout == b"Validation successful!\n"


def test_a_cluster_writes_into_it_and_the_validator_passes(tmp_path):
    port = closed_port()
    with Cluster(tmp_path, workers=2) as cluster:
        with Tool("receiver", "-l", f"127.0.0.1:{port}", "-e", "200", cwd=tmp_path) as recv:
            recv.wait_stdout(lambda out: LISTENING in out)
            cluster.start(sink=f"127.0.0.1:{port}")
            cluster.send(200, "-s", "50", "-i", "0")
            assert recv.wait() == 0, recv.report() + cluster.report()
        assert b"200 expected messages received. Terminating..." in recv.stdout
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
    result = run_tool("validator", "-e", "200", "-i", str(tmp_path / "received.txt"))
    assert result.returncode == 0, explain(result)


def test_no_write_counts_without_touching_received_txt(tmp_path):
    tool, port = start(tmp_path, "-w", "-e", "2")
    with tool:
        send(port, frame(b"x") + frame(b"y"))
        assert tool.wait() == 0, tool.report()
    assert b"2 expected messages received. Terminating..." in tool.stdout
    assert not (tmp_path / "received.txt").exists()


def test_a_signal_ends_the_run_with_what_was_received_and_metrics(tmp_path):
    tool, port = start(tmp_path, "--metrics")
    with tool:
        send(port, frame(b"only one"))
        tool.wait_stdout(lambda out: b"Metrics Start: " in out)
        assert tool.stop(signal.SIGTERM) == 0, tool.report()
    got = giles_records((tmp_path / "received.txt").read_bytes())
    assert [body for _, body in got] == [b"only one"]
    lines = tool.stdout.decode().splitlines()
    assert lines[0] == "Listening for data"
    assert re.fullmatch(r"Metrics Start: \d+", lines[1]), lines
    assert re.fullmatch(r"Metrics End: \d+", lines[2]), lines
    assert int(lines[2].split()[-1]) >= int(lines[1].split()[-1])
    assert re.fullmatch(r"Overall Time: \d+\.\d{6}s", lines[3]), lines
    assert lines[4] == "Messages: 1"
    assert re.fullmatch(r"Throughput: \d+k", lines[5]) and len(lines) == 6, lines


def test_sigint_before_any_record_leaves_an_empty_file(tmp_path):
    (tmp_path / "received.txt").write_bytes(b"from an earlier run")
    tool, _ = start(tmp_path, "-m")
    with tool:
        assert tool.stop(signal.SIGINT) == 0, tool.report()
    assert (tmp_path / "received.txt").read_bytes() == b""  # truncated at start
    assert tool.stdout == LISTENING  # no Metrics lines without a record


def test_an_oversized_frame_closes_only_its_connection(tmp_path):
    tool, port = start(tmp_path, "-e", "2")
    with tool:
        bad = socket.create_connection(("127.0.0.1", port), timeout=30)
        with bad:
            bad.sendall(struct.pack(">I", 16 * 1024 * 1024 + 1) + b"zz")
            tool.wait_stderr(lambda err: b"exceeds 16 MiB" in err)
            assert bad.recv(10) == b""  # closed by the receiver
        send(port, frame(b"good1") + frame(b"good2"))
        assert tool.wait() == 0, tool.report()
    assert re.match(rb"ERROR: 127\.0\.0\.1:\d+: frame length 16777217 exceeds 16 MiB\n",
                    tool.stderr)  # fmt: skip
    got = giles_records((tmp_path / "received.txt").read_bytes())
    assert [body for _, body in got] == [b"good1", b"good2"]


def test_a_partial_frame_at_close_is_discarded_with_a_warning(tmp_path):
    tool, port = start(tmp_path, "-e", "2")
    with tool:
        send(port, frame(b"whole") + frame(b"cut short")[:6])
        tool.wait_stderr(lambda err: b"WARNING:" in err)
        send(port, frame(b"next"))
        assert tool.wait() == 0, tool.report()
    assert b"connection closed inside a frame; discarded 6 bytes" in tool.stderr
    bodies = [body for _, body in giles_records((tmp_path / "received.txt").read_bytes())]
    assert bodies == [b"whole", b"next"]


def test_a_port_in_use_is_unable_to_open_listener(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tool("receiver", "-l", f"127.0.0.1:{port}", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    assert result.stderr == b"Unable to open listener\n"


def test_dagon_options_are_accepted_together_and_do_nothing(tmp_path):
    tool, port = start(tmp_path, "--name", "giles-receiver", "--phone-home", "127.0.0.1:1",
                       "-e", "1")  # fmt: skip
    with tool:
        send(port, frame(b"x"))
        assert tool.wait() == 0, tool.report()


def full_disk(tmp_path) -> None:
    """received.txt in ``tmp_path`` becomes /dev/full: every write to it fails with ENOSPC."""
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full on this system")
    (tmp_path / "received.txt").symlink_to("/dev/full")


NO_SPACE = b"Error: cannot write received.txt: No space left on device\n"


def test_a_full_disk_at_the_end_is_one_line_and_exit_1(tmp_path):
    full_disk(tmp_path)
    tool, port = start(tmp_path, "-e", "1")
    with tool:
        send(port, frame(b"kept in the buffer until the file is closed"))
        assert tool.wait() == 1, tool.report()
    assert tool.stderr == NO_SPACE, tool.report()


def test_a_full_disk_while_receiving_ends_the_run_with_one_line_and_exit_1(tmp_path):
    full_disk(tmp_path)
    tool, port = start(tmp_path)  # no --expect: only the failed write can end it
    with tool:
        send(port, frame(b"x" * (2 << 20)))  # past the file's buffer, so written at once
        assert tool.wait() == 1, tool.report()
    assert tool.stderr == NO_SPACE, tool.report()
    assert b"expected messages received" not in tool.stdout


LISTEN = ["-l", "127.0.0.1:7002"]
WITHOUT_NAME = "'--phone-home' must be used in conjunction with '--name'"
BAD_EXPECT = "'--expect' must be an integer greater than 0"


@pytest.mark.parametrize(
    ("args", "first_line"),
    [
        ([], "Must supply required '--listen' argument"),
        (["-l", "127.0.0.1"], "'--listen' argument should be in format: '127.0.0.1:8080"),
        ([*LISTEN, "-e", "0"], BAD_EXPECT),
        ([*LISTEN, "--expect=-5"], BAD_EXPECT),
        ([*LISTEN, "-e", "many"], BAD_EXPECT),
        ([*LISTEN, "--expect="], BAD_EXPECT),
        ([*LISTEN, "-n", "r1"], WITHOUT_NAME),
        ([*LISTEN, "-d", "127.0.0.1:9"], WITHOUT_NAME),
        ([*LISTEN, "-n", "r", "-d", "dagon"],
         "'--phone-home' argument should be in format: '127.0.0.1:8080"),
        ([*LISTEN, "--framed"], "Error: unknown option --framed"),
    ],
)  # fmt: skip
def test_bad_command_lines_say_why_and_exit_1(tmp_path, args, first_line):
    result = run_tool("receiver", *args, cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    lines = result.stderr.decode().splitlines()
    assert lines == [first_line, lines[1]] and lines[1].startswith(USAGE)
    assert result.stdout == b"" and not (tmp_path / "received.txt").exists()


def test_help_lists_every_flag():
    result = run_tool("receiver", "--help")
    assert result.returncode == 0, explain(result)
    for flag in ("--listen", "--expect", "--no-write", "--metrics", "--name", "--phone-home"):
        assert flag.encode() in result.stdout
