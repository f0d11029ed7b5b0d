"""A cluster no stranger can join: default listeners, authenticated links, checked peers.

Each test runs the real initializer and worker-2 and attacks them as the
reports did: a forged "initializer" on worker-2's data port (values, a jump
in sequence numbers, a pickle, a 256 MB frame), and an impostor worker-2.
Nothing an attacker sends may be applied, skipped, deserialized or buffered.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import os
import pickle
import re
import socket
import struct
from pathlib import Path

import pytest
from clusterhelp import Cluster
from toolhelp import DEADLINE, Tool, closed_port, dial_as_a_worker, run_tool

from machida.runtime import channels, guard
from machida.runtime.channels import ControlChannel
from machida.wire.auth import DiallerHandshake
from machida.wire.boundary import encode_batch, hello
from machida.wire.framing import encode_frame

LISTEN = "0A"  # TCP_LISTEN in /proc/net/tcp


def listening(pid: int) -> list[tuple[str, int]]:
    """The addresses the TCP sockets of process ``pid`` listen on (IPv4)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    found = []
    for line in Path(f"/proc/{pid}/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == LISTEN and fields[9] in inodes:
            host, port = fields[1].split(":")
            address = socket.inet_ntoa(struct.pack("<I", int(host, 16)))
            found.append((address, int(port, 16)))
    return found


class Unpickled:
    """A payload that leaves a file behind if anyone unpickles it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (open, (str(self.path), "w"))


def worker_data_address(cluster: Cluster) -> str:
    """Where worker-2's data listener is, from its recovery files."""
    recorded = json.loads((cluster.dir / "sequence_window-worker-2.tcp-data").read_text())
    return ":".join(map(str, recorded["data"]))


def test_no_listener_binds_every_interface_in_a_default_run(tmp_path):
    with Cluster(tmp_path).start() as cluster:
        for name in ("initializer", "worker-2"):
            addresses = listening(cluster.procs[name].proc.pid)
            assert len(addresses) >= 2, (name, addresses)  # control and data at least
            assert {host for host, _ in addresses} == {"127.0.0.1"}, (name, addresses)


def test_a_forged_initializer_without_the_secret_gets_nothing_in(tmp_path):
    with Cluster(tmp_path).start() as cluster:
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        worker = cluster.procs["worker-2"]
        address = worker_data_address(cluster)
        host, port = address.rsplit(":", 1)
        evidence = tmp_path / "unpickled"
        attacks = [
            hello("initializer", 1) + encode_batch(1, [[(0, 1, 1), True, [1001, 1003, 1005]]]),
            hello("initializer", 1) + encode_batch(2**62, [[(0, 1, 1), True, [7]]]),
            hello("initializer", 1) + encode_batch(1, [[(0, 1, 1), False,
                                                        [pickle.dumps(Unpickled(evidence))]]]),
        ]  # fmt: skip
        rss = _rss_kb(worker.proc.pid)
        for attack in attacks:
            with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
                sock.recv(64)  # the challenge, which the attacker cannot answer
                sock.sendall(attack)
                assert _closed_by_peer(sock)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
            sock.recv(64)
            # an unfinished 256 MB frame: at most the handshake's 64 bytes are read
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                sock.sendall(struct.pack(">IB", 256 * 1024 * 1024, 0x4D) + b"\0" * (8 << 20))
            assert _closed_by_peer(sock)
        assert _rss_kb(worker.proc.pid) - rss < 4096
        cluster.send(100, "-s", "100", "-i", "0", start_from=100)
        windows = cluster.wait_windows(200)
        assert not evidence.exists()
        assert cluster.validate(200).returncode == 0  # nothing injected, nothing skipped
        assert all(w[-1] <= 200 for w in windows)
        err = worker.wait_stderr(lambda e: e.count(b"refused a data connection") >= 4)
        refusals = [line for line in err.decode().splitlines() if "refused" in line]
        assert len(refusals) == 4 and all(
            line.startswith("WARNING: refused a data connection from 127.0.0.1:")
            for line in refusals
        ), refusals


def test_a_worker_that_proves_another_secret_is_refused_on_every_link(tmp_path):
    other = tmp_path / "other-secret"
    other.write_text("o" * 64)
    other.chmod(0o600)
    with Cluster(tmp_path).start() as cluster:
        control = cluster.control
        with dial_as_a_worker(control, b"control") as ok:  # the right secret gets through
            ok.sendall(b"")
        try:
            dial_as_a_worker(control, b"control", secret=b"o" * 64)
        except AssertionError as refused:
            assert "closed the connection during the handshake" in str(refused)
        else:
            raise AssertionError("a link with the wrong secret was accepted")
        # an impostor worker-2, after the real one died, with its own sink
        assert cluster.kill("worker-2") == -9
        theirs = Tool("data_receiver", "-l", "127.0.0.1:0", "--framed", cwd=tmp_path)
        with theirs:
            args = cluster.worker_args(1)
            args[args.index("--out") + 1] = f"127.0.0.1:{theirs.listening_port()}"
            impostor = Tool("machida", *args, "--cluster-secret-file", str(other), cwd=tmp_path)
            with impostor:
                impostor.wait_stderr(lambda e: b"refused this worker's link" in e)
                cluster.wait_for("initializer", b"refused a control connection", "stderr")
                cluster.send(50, "-s", "50", "-i", "0")
                assert theirs.stdout.count(b"\n") <= 1  # "Listening on ...": no windows
                assert (
                    b"Worker worker-2 control channel identified"
                    not in (cluster.procs["initializer"].stdout.split(b"Application has")[1])
                )


def test_a_secret_other_users_can_read_stops_the_worker_with_one_line(tmp_path):
    loose = tmp_path / "secret"
    loose.write_text("l" * 64)
    loose.chmod(0o644)
    cluster = Cluster(tmp_path, workers=1)
    cluster.out = f"127.0.0.1:{closed_port()}"
    result = run_tool("machida", *cluster.initializer_args(), "--cluster-secret-file", str(loose),
                      cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().splitlines() == [
        f"Error: the cluster secret {loose} can be read by other users (mode 644); "
        f"make it private: chmod 600 {loose}"
    ]


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(DEADLINE)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_the_listening_helper_sees_a_wildcard_listener():
    with socket.create_server(("0.0.0.0", 0)) as server:
        assert ("0.0.0.0", server.getsockname()[1]) in listening(os.getpid())


def test_a_member_that_sends_nonsense_is_cut_off_with_one_line_and_the_cluster_goes_on(tmp_path):
    with Cluster(tmp_path).start() as cluster:
        with dial_as_a_worker(worker_data_address(cluster), b"data") as sock:
            sock.sendall(hello("initializer", 5) + encode_batch(1, [[(3, 1, 7), True, [1]]]))
            assert _closed_by_peer(sock)
        with dial_as_a_worker(cluster.control, b"control") as sock:
            sock.sendall(encode_frame(json.dumps({"type": "bogus"}).encode()))
            assert _closed_by_peer(sock)
        worker = cluster.wait_for("worker-2", b"which this worker does not own", "stderr")
        init = cluster.wait_for("initializer", b"unknown control message type 'bogus'", "stderr")
        assert b"Traceback" not in worker + init
        assert re.search(rb"ERROR: data link from 127\.0\.0\.1:\d+: a batch has records for "
                         rb"pipeline 3, step 1, key index 7, which this worker does not own; "
                         rb"connection closed\n", worker)  # fmt: skip
        assert re.search(rb"ERROR: control connection with 127\.0\.0\.1:\d+: unknown control "
                         rb"message type 'bogus'; connection closed\n", init)  # fmt: skip
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        assert cluster.validate(100).returncode == 0


def test_a_dial_to_an_address_that_never_answers_gives_up(monkeypatch):
    """A listener whose accept queue is full drops the SYN, as a black-holed address does."""
    monkeypatch.setattr(guard, "CONNECT_TIMEOUT_S", 0.3)
    with socket.socket() as full:
        full.bind(("127.0.0.1", 0))
        full.listen(0)
        port = full.getsockname()[1]
        with socket.create_connection(("127.0.0.1", port)):  # the one the queue holds

            async def attempt() -> str:
                handshake = DiallerHandshake(b"s" * 40, b"control")
                return await guard.dial(ControlChannel(None), handshake, "127.0.0.1", port)

            with pytest.raises(OSError) as err:
                asyncio.run(asyncio.wait_for(attempt(), DEADLINE))
    assert err.value.errno == errno.ETIMEDOUT


def test_refusal_lines_are_bounded_and_the_rest_counted(capsys):
    now = [100.0]
    limit = guard.HandshakeLimit("data", clock=lambda: now[0])
    for i in range(guard.REFUSAL_LINES + 5):
        limit.refused(f"10.0.0.1:{i}", "wrong secret")
    now[0] += guard.REFUSAL_WINDOW_S
    limit.refused("10.0.0.2:1", "wrong secret")
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == guard.REFUSAL_LINES + 1
    assert lines[0] == "WARNING: refused a data connection from 10.0.0.1:0: wrong secret"
    assert lines[-1] == ("WARNING: refused a data connection from 10.0.0.2:1: wrong secret "
                         "(5 more refused since the last line)")  # fmt: skip


def test_a_stranger_cannot_hold_more_than_a_bounded_number_of_handshakes(monkeypatch, capsys):
    monkeypatch.setattr(guard, "MAX_PENDING_HANDSHAKES", 3)

    async def scenario() -> tuple[list[bytes], bytes]:
        factory = guard.guarded(b"s" * 40, b"data", lambda: channels.Ignored())
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        held = [await asyncio.open_connection("127.0.0.1", port) for _ in range(3)]
        challenges = [await reader.readexactly(1) for reader, _ in held]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        extra = await asyncio.wait_for(reader.read(), DEADLINE)  # closed at once: EOF
        for _, w in [*held, (reader, writer)]:
            w.close()
        server.close()
        return challenges, extra

    challenges, extra = asyncio.run(scenario())
    assert all(challenges) and extra == b""
    assert "more than 3 connections proving the secret" in capsys.readouterr().err


def test_a_dial_that_connects_to_itself_lets_the_port_go_at_once(monkeypatch):
    """With nothing listening on an ephemeral port, the kernel may give the dialling socket
    that very port and connect it to itself; the port must be free again for the listener."""
    port = closed_port()

    async def attempt() -> None:
        loop = asyncio.get_running_loop()
        real = loop.create_connection

        def to_itself(factory, host, port_):  # force the self-connect the kernel may make
            return real(factory, host, port_, local_addr=(host, port_))

        monkeypatch.setattr(loop, "create_connection", to_itself)
        handshake = DiallerHandshake(b"s" * 40, b"control")
        await guard.dial(ControlChannel(None), handshake, "127.0.0.1", port)

    with pytest.raises(ConnectionRefusedError):
        asyncio.run(asyncio.wait_for(attempt(), DEADLINE))
    with socket.socket() as listener:  # as the initializer's control listener binds it
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen()
