"""Bad input and failing user code on a real cluster: one clear error, nothing else lost."""

from __future__ import annotations

import contextlib
import random
import socket
import struct

import pytest
from clusterhelp import Cluster
from toolhelp import DEADLINE, Tool, closed_port, run_tool

FRAME = struct.Struct(">IQ")


def frames(values) -> bytes:
    return b"".join(FRAME.pack(8, v) for v in values)


def source(cluster: Cluster) -> socket.socket:
    return socket.create_connection(("127.0.0.1", cluster.in_port), timeout=DEADLINE)


def newest(cluster: Cluster) -> list[int]:
    return sorted(w[-1] for w in cluster.windows())


def test_zero_length_frame_closes_only_that_connection(tmp_path):
    """Scenario 51."""
    with Cluster(tmp_path).start() as cluster, source(cluster) as bad, source(cluster) as good:
        bad.sendall(frames(range(1, 11)) + b"\x00\x00\x00\x00" + frames([11]))
        assert bad.recv(10) == b""  # the runner closed it
        cluster.wait_for("initializer", b"invalid payload length 0", "stderr")
        err = cluster.procs["initializer"].stderr.decode()
        assert "ERROR: Decoder.payload_length() gave invalid payload length 0" in err
        assert "; connection closed" in err
        good.sendall(frames(range(12, 40)))
        cluster.wait_windows(38)
        assert newest(cluster) == list(range(1, 11)) + list(range(12, 40))
        assert all(t.proc.poll() is None for t in cluster.procs.values())


def test_oversize_length_is_reported_and_earlier_frames_kept(tmp_path):
    """Scenario 52."""
    with Cluster(tmp_path).start() as cluster, source(cluster) as bad:
        bad.sendall(frames(range(1, 11)) + b"\xff\xff\xff\xff")
        assert bad.recv(10) == b""
        cluster.wait_for("initializer", b"invalid payload length 4294967295", "stderr")
        assert len(cluster.wait_windows(10)) == 10


def test_truncated_frame_at_close_is_a_warning_with_the_byte_count(tmp_path):
    """Scenario 53."""
    with Cluster(tmp_path).start() as cluster:
        with source(cluster) as conn:
            conn.sendall(frames(range(1, 101)) + frames([101])[:6])
        cluster.wait_for("initializer", b"6 byte(s) discarded", "stderr")
        assert len(cluster.wait_windows(100)) == 100
        assert cluster.validate(100).returncode == 0


def test_a_payload_that_does_not_decode_is_dropped_and_the_connection_goes_on(tmp_path):
    """Scenario 54."""
    with Cluster(tmp_path).start() as cluster, source(cluster) as conn:
        conn.sendall(frames(range(1, 6)) + b"\x00\x00\x00\x04abcd" + frames(range(6, 11)))
        cluster.wait_windows(10)
        err = cluster.wait_for("initializer", b"Traceback", "stderr").decode()
        assert "ERROR: Decoder.decode() raised error" in err
        assert newest(cluster) == list(range(1, 11))


def test_garbage_on_one_connection_does_not_disturb_another(tmp_path):
    """Scenario 55."""
    garbage = random.Random(55).randbytes(10_000)
    with Cluster(tmp_path).start() as cluster, source(cluster) as bad:
        bad.sendall(garbage)
        cluster.send(1000, "-s", "100", "-i", "1_000_000")
        bad.close()
        cluster.wait_for("initializer", b"Decoder.", "stderr")
        values = set(newest(cluster))
        for _ in range(100):
            if set(range(1, 1001)) <= values:
                break
            cluster.wait_windows(len(cluster.windows()) + 1, timeout=5)
            values = set(newest(cluster))
        assert set(range(1, 1001)) <= values
        assert all(t.proc.poll() is None for t in cluster.procs.values())


FAULTY_APP = """
import wallaroo
from sequence_window import *

class Picky(SequencePartitionFunction):
    def partition(self, data):
        if data == 7:
            raise IndexError("seven")
        if data == 9:
            raise SystemExit(3) if EXIT else IndexError("nine")
        return data % 2

EXIT = {exit}

def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Sequence Window")
    ab.new_pipeline("Sequence Window", wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to(MaybeOneToMany)
    ab.to_state_partition(ObserveNewValue(), SequenceWindowStateBuilder(), "Sequence Window",
                          Picky(), [0, 1])
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()
"""


def test_a_raising_partition_is_named_and_the_worker_keeps_running(tmp_path):
    """Scenario 58 (machida segfaulted here)."""
    (tmp_path / "picky.py").write_text(FAULTY_APP.format(exit=False))
    with Cluster(tmp_path, app="picky").start() as cluster:
        cluster.send(20, "-s", "20", "-i", "0")
        cluster.wait_windows(18)
        err = cluster.procs["initializer"].stderr.decode()
        assert "ERROR: Picky.partition() raised IndexError: seven" in err
        assert "Traceback (most recent call last)" in err
        assert newest(cluster) == [v for v in range(1, 21) if v not in (7, 9)]
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}
        assert "machida: 2 message(s) dropped: raised (Picky.partition)" in (
            cluster.procs["initializer"].stderr.decode()
        )


def test_system_exit_in_user_code_ends_the_process_with_its_code(tmp_path):
    """Scenario 70."""
    (tmp_path / "picky.py").write_text(FAULTY_APP.format(exit=True))
    with Cluster(tmp_path, app="picky").start() as cluster:
        cluster.send(10, "-s", "10", "-i", "0")
        assert cluster.procs["initializer"].wait() == 3
        assert "Picky.partition() raised SystemExit(3)" in (
            cluster.procs["initializer"].stderr.decode()
        )


@pytest.mark.parametrize(
    ("module", "source", "args", "expected"),
    [
        ("no_such_module", None, [], "Could not load module 'no_such_module'"),
        ("nosetup", "x = 1\n", [], "Error: module 'nosetup' has no application_setup(args)"),
        ("sequence_window", None, ["--drop-in"], "args contain no --in/-i option"),
        (
            "donetwice",
            "import wallaroo\nfrom sequence_window import *\n"
            "def application_setup(args):\n"
            "    ab = wallaroo.ApplicationBuilder('A')\n"
            "    ab.new_pipeline('P', wallaroo.TCPSourceConfig('127.0.0.1', '0', Decoder()))\n"
            "    ab.to_sink(wallaroo.TCPSinkConfig('127.0.0.1', '0', Encoder())).done()\n"
            "    return ab.build()\n",
            [],
            "has no open pipeline: to_sink() already closed",
        ),
        (
            "instance",
            "import wallaroo\nfrom sequence_window import *\n"
            "def application_setup(args):\n"
            "    return wallaroo.ApplicationBuilder('A').to(MaybeOneToMany()).build()\n",
            [],
            "Expecting a Computation class. Got an instance instead.",
        ),
    ],
)
def test_start_up_errors_exit_1_with_a_clear_message(tmp_path, module, source, args, expected):
    """Scenarios 64-68."""
    if source is not None:
        (tmp_path / f"{module}.py").write_text(source)
    cluster = Cluster(tmp_path, workers=1, app=module)
    cluster.out = f"127.0.0.1:{closed_port()}"
    argv = cluster.initializer_args()
    if "--drop-in" in args:
        where = argv.index("--in")
        del argv[where : where + 2]
    result = run_tool("machida", *argv, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert expected in result.stderr.decode()
    if module not in ("no_such_module", "nosetup"):
        assert "Something went wrong while building the application" in result.stderr.decode()


def test_source_port_in_use_is_a_clear_error(tmp_path):
    """Scenario 69."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        cluster = Cluster(tmp_path, workers=1)
        cluster.in_port = taken.getsockname()[1]
        cluster.out = f"127.0.0.1:{closed_port()}"
        result = run_tool("machida", *cluster.initializer_args(), cwd=tmp_path)
    assert result.returncode == 1
    lines = result.stderr.decode().splitlines()
    where = f"127.0.0.1:{cluster.in_port}"
    assert lines == [f"Error: Sequence Window source is unable to listen on {where}: "
                     f"Address already in use"]  # fmt: skip


def test_external_channel_bad_frame_unknown_id_and_print(tmp_path):
    """Scenarios 71 and 72, and Print."""
    with Cluster(tmp_path).start() as cluster:
        host, port = cluster.externals[0].split(":")
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as conn:
            conn.sendall(b"\x00\x00\x00\x01\x00")
            assert conn.recv(10) == b""
        cluster.wait_for("initializer", b"ERROR: external connection from", "stderr")
        run_tool("external_sender", "-e", cluster.externals[0], "-t", "print", "-m", "hi there")
        cluster.wait_for("initializer", b"$$$ ExternalPrint: hi there $$$")
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as conn:
            conn.sendall(b"\x00\x00\x00\x02\x00\x63")
        cluster.wait_for(
            "initializer", b"Incoming External Message type not handled by external channel."
        )
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}


def test_rotate_log_without_resilience_says_rotation_is_off(tmp_path):
    with Cluster(tmp_path).start() as cluster:
        run_tool("external_sender", "-e", cluster.externals[0], "-t", "rotate-log", "-m",
                 "worker-2")  # fmt: skip
        cluster.wait_for("worker-2", b"WARNING: LogRotation requested, but log_rotation is off!")
        run_tool("external_sender", "-e", cluster.externals[1], "-t", "rotate-log", "-m", "nope")
        cluster.wait_for("worker-2", b"RotateLog requested for unknown worker 'nope'", "stderr")


def test_a_worker_started_first_waits_for_the_initializer(tmp_path):
    """Scenario 41."""
    with Cluster(tmp_path) as cluster:
        cluster.start_receiver()
        early = cluster.start_worker(1)
        early.wait_stdout(lambda out: b"Waiting for initializer at " in out)
        cluster.start_initializer()
        cluster.wait_ready()
        cluster.send(100, "-s", "50", "-i", "0")
        cluster.wait_windows(100)
        assert cluster.validate(100).returncode == 0


def test_three_workers_the_third_has_a_sink_but_no_key(tmp_path):
    """Scenario 42."""
    with Cluster(tmp_path, workers=3).start() as cluster:
        cluster.send(200, "-s", "100", "-i", "0")
        cluster.wait_windows(200)
        assert cluster.validate(200).returncode == 0
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0, "worker-3": 0}


def test_sink_not_listening_at_start_then_ready_once_it_is(tmp_path):
    """Scenario 44."""
    with Cluster(tmp_path) as cluster:
        port = closed_port()
        cluster.out = f"127.0.0.1:{port}"
        cluster.start_initializer()
        cluster.start_worker(1)
        cluster.wait_for("initializer", b"Waiting for sink at 127.0.0.1:")
        assert b"Application has successfully initialized." not in (
            cluster.procs["initializer"].stdout
        )
        cluster.receiver = Tool("data_receiver", "-l", f"127.0.0.1:{port}", "--framed")
        cluster.wait_ready()
        cluster.send(1000, "-s", "500", "-i", "0")
        cluster.wait_windows(1000)
        assert cluster.validate(1000).returncode == 0


def test_a_second_worker_with_a_different_app_is_refused(tmp_path):
    """Scenario 50."""
    (tmp_path / "three_keys.py").write_text(
        "import sequence_window as sw\nimport wallaroo\n"
        "def application_setup(args):\n"
        "    actions = sw.application_setup(args)\n"
        "    return [a[:5] + ([0, 1, 2],) if a[0] == 'to_state_partition' else a"
        " for a in actions]\n"
    )
    with Cluster(tmp_path, workers=3) as cluster:
        cluster.start_receiver()
        cluster.start_initializer()
        odd = Tool("machida", *[a if a != "sequence_window" else "three_keys"
                                for a in cluster.worker_args(1)], cwd=tmp_path)  # fmt: skip
        assert odd.wait() == 1, odd.report()
        assert b"Error: the initializer refused this worker" in odd.stderr
        cluster.wait_for("initializer", b"WARNING: refused worker 'worker-2'", "stderr")
        cluster.start_worker(1)
        cluster.wait_for("initializer", b"Worker worker-2 control channel identified")
        twin_args = cluster.worker_args(1)
        twin_args[twin_args.index("--external") + 1] = f"127.0.0.1:{closed_port()}"
        twin = Tool("machida", *twin_args, cwd=tmp_path)
        assert twin.wait() == 1, twin.report()
        assert b"has already joined" in twin.stderr
        cluster.start_worker(2)
        cluster.wait_ready()


BUILD_FAILS_ON_WORKER_2 = """\
import sys
import sequence_window
from sequence_window import *


class FragileBuilder(object):
    def build(self):
        if "worker-2" in sys.argv:
            raise ValueError("no room for a window here")
        return sequence_window.SequenceWindow()


sequence_window.SequenceWindowStateBuilder = FragileBuilder
"""


@pytest.mark.parametrize("failing", ["initializer", "worker-2"])
def test_a_state_builder_that_raises_ends_that_worker_with_one_line(tmp_path, failing):
    """The builder runs when the member list arrives, inside a control read on worker-2."""
    marker = "--cluster-initializer" if failing == "initializer" else failing
    (tmp_path / "fragile.py").write_text(BUILD_FAILS_ON_WORKER_2.replace("worker-2", marker))
    cluster = Cluster(tmp_path, app="fragile")
    cluster.start_receiver()
    with contextlib.closing(cluster):
        cluster.start_initializer()
        cluster.start_worker(1)
        assert cluster.procs[failing].wait() == 1, cluster.report()
        err = cluster.procs[failing].stderr.decode()
        errors = [line for line in err.splitlines() if line.startswith("Error:")]
        assert errors == [
            "Error: FragileBuilder.build() raised ValueError: no room for a window here while "
            f"building state 'Sequence Window' on worker '{failing}'"
        ], cluster.report()
        assert "Traceback" not in err and "Fatal error" not in err, cluster.report()
