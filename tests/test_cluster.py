"""A real 2-worker cluster over loopback TCP: the seed README's run and its guarantees."""

from __future__ import annotations

import json
import signal
import socket
import struct
import threading
import time

import pytest
from clusterhelp import Cluster
from toolhelp import (
    DEADLINE,
    RawListener,
    Tool,
    accept_as_a_worker,
    closed_port,
    run_tool,
    wait_until,
)

from machida.metrics import RecordDecoder
from machida.testing import run


def finals(windows: list[list[int]]) -> tuple[list[int], list[int]]:
    even = [w for w in windows if w[-1] % 2 == 0]
    odd = [w for w in windows if w[-1] % 2 == 1]
    return even[-1], odd[-1]


def test_seed_readme_run_validates_and_shuts_down_cleanly(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start()
        init = cluster.procs["initializer"].stdout.decode()
        assert "2 worker topology" in init
        assert f"Sequence Window source listening on 127.0.0.1:{cluster.in_port}" in init
        assert "Worker worker-2 control channel identified" in init
        assert "All 2 workers reporting Topology ready!" in init
        cluster.send(1000, "-s", "50", "-i", "5_000_000")
        windows = cluster.wait_windows(1000)
        assert len(windows) == 1000
        assert finals(windows) == ([994, 996, 998, 1000], [993, 995, 997, 999])
        verdict = cluster.validate(1000)
        assert verdict.returncode == 0, verdict.stderr
        codes = cluster.shutdown()
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        for name in ("initializer", "worker-2"):
            out = cluster.procs[name].stdout.decode()
            assert "Recovery files removed." in out, cluster.report()
            assert out.rstrip().endswith("Connections: Finished shutdown procedure.")
        assert cluster.windows() == windows  # nothing more arrived


def test_hundred_thousand_back_to_back_validates_strictly(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start()
        cluster.send(100_000, "-s", "1000", "-i", "0")
        windows = cluster.wait_windows(100_000, timeout=60)
        assert len(windows) == 100_000
        verdict = cluster.validate(100_000)
        assert verdict.returncode == 0, verdict.stderr + cluster.report().encode()


def test_each_worker_has_its_own_sink_connection_carrying_one_key(tmp_path):
    with RawListener() as sink, Cluster(tmp_path) as cluster:
        cluster.start(sink=sink.address)
        cluster.send(100, "-s", "10", "-i", "10_000_000")
        wait_until(lambda: sum(c.size for c in sink.connections) >= 50 * 13 + 50 * 14, 30,
                   "100 windows at the sink")  # fmt: skip
        assert len(sink.connections) == 2
        parities = []
        for connection in sink.connections:
            windows = _framed_windows(connection.data)
            parities.append({w[-1] % 2 for w in windows})
            assert len(windows) == 50
        assert sorted(map(sorted, parities)) == [[0], [1]]


def test_clean_shutdown_right_after_the_sender_loses_nothing(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start()
        cluster.send(10_000, "-s", "500", "-i", "0")
        started = time.monotonic()
        codes = cluster.shutdown()
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert time.monotonic() - started < 5.0  # the bound: both exit within 5 s
        assert len(cluster.wait_windows(10_000)) == 10_000
        assert cluster.validate(10_000).returncode == 0
        assert not list(tmp_path.glob("sequence_window-*")), list(tmp_path.iterdir())


def test_shutdown_sent_to_worker_2_stops_the_whole_cluster(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start()
        cluster.send(2000, "-s", "500", "-i", "0")
        codes = cluster.shutdown(via=1)
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert len(cluster.wait_windows(2000)) == 2000


def test_cluster_and_driver_give_the_same_windows(tmp_path):
    values = list(range(1, 301))
    expected = run("sequence_window", values, workers=2)
    with Cluster(tmp_path) as cluster:
        cluster.start()
        cluster.send(300, "-s", "30", "-i", "1_000_000")
        got = cluster.wait_windows(300)
    by_parity = {0: [], 1: []}
    for data in expected:
        window = [int(x) for x in data[4:].strip(b"[]").split(b",")]
        by_parity[window[-1] % 2].append(window)
    assert [w for w in got if w[-1] % 2 == 0] == by_parity[0]
    assert [w for w in got if w[-1] % 2 == 1] == by_parity[1]


def _framed_windows(data: bytes) -> list[list[int]]:
    windows, pos = [], 0
    while pos + 4 <= len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        payload = data[pos + 4 : pos + 4 + length]
        windows.append([int(x) for x in payload.strip(b"[]").split(b",")])
        pos += 4 + length
    return windows


def test_worker_restart_without_resilience_rejoins_with_fresh_state(tmp_path):
    """Scenario 82: kill -9 worker-2 mid-stream and start it again with the same command."""
    with Cluster(tmp_path).start() as cluster:
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", "200", "-y", "-g",
                      "12", "-u", "-w", "-s", "1", "-i", "10_000_000", cwd=tmp_path)  # fmt: skip
        with sender:
            cluster.wait_windows(40)
            assert cluster.kill("worker-2") == -9
            restarted = cluster.start_worker(1)
            restarted.wait_stdout(lambda out: b"Restarting a listener ..." in out)
            assert sender.wait() == 0, sender.report()
        windows = cluster.wait_windows(150)
        wait_until(lambda: {199, 200} <= {w[-1] for w in cluster.windows()}, 30,
                   "both final windows")  # fmt: skip
        windows = cluster.windows()
        assert finals(windows) == ([194, 196, 198, 200], [193, 195, 197, 199])
        out = restarted.stdout.decode()
        assert "Recovering from recovery files!" in out and "RESILIENCE:" not in out
        odd_after = [w for w in windows[40:] if w[-1] % 2 == 1]
        assert any(w[:3] == [0, 0, 0] and w[3] > 1 for w in odd_after), odd_after[:5]
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()


COUNT = 2_000_000


def test_a_stopped_receiver_throttles_the_sender_and_memory_stays_bounded(tmp_path):
    """Scenario 45: a sink that stops reading holds back the whole pipeline, and loses nothing.

    Loopback sockets buffer several MB in the kernel, so it takes more than the
    scenario's 200 000 messages before the runner itself has to push back.
    """
    hold = threading.Event()
    with RawListener(rcvbuf=4096, hold=hold) as sink, Cluster(tmp_path) as cluster:
        cluster.start(sink=sink.address)
        rss_before = {n: _rss(t.proc.pid) for n, t in cluster.procs.items()}
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", str(COUNT), "-y",
                      "-g", "12", "-u", "-w", "-s", "1000", "-i", "0", cwd=tmp_path)  # fmt: skip
        with sender:
            cluster.wait_for("initializer", b"paused its inputs for over 1 s", "stderr")
            assert sender.proc.poll() is None, "the sender was never held back"
            rss_during = {n: _rss(t.proc.pid) for n, t in cluster.procs.items()}
            hold.set()
            assert sender.wait(60) == 0, sender.report()
        total = sum(4 + len(_text(n)) for n in range(1, COUNT + 1))
        wait_until(lambda: sum(c.size for c in sink.connections) >= total, 60, "every window")
        stream = b"".join(c.data for c in sink.connections)
        assert len(_framed_windows(stream)) == COUNT
        path = tmp_path / "sink.bin"
        path.write_bytes(stream)
        assert run_tool("validator", "-e", str(COUNT), "-i", str(path)).returncode == 0
        for name, before in rss_before.items():
            assert rss_during[name] - before < 200 * 1024 * 1024, (rss_before, rss_during)


def _text(n: int) -> str:
    return "[" + ",".join(str(max(0, v)) for v in (n - 6, n - 4, n - 2, n)) + "]"


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


def test_each_worker_streams_stats_records_to_the_metrics_address(tmp_path):
    """--metrics: both workers report; a receiver that is absent at first is picked up later."""
    with Cluster(tmp_path).start() as cluster:
        cluster.send(1000, "-s", "500", "-i", "0")
        cluster.wait_windows(1000)
        host, port = cluster.metrics.split(":")
        records: dict[str, dict] = {}
        with socket.create_server((host, int(port))) as server:
            server.settimeout(DEADLINE)
            conns = [server.accept()[0], server.accept()[0]]
            decoders = {conn: RecordDecoder() for conn in conns}
            deadline = time.monotonic() + DEADLINE
            while time.monotonic() < deadline and not _both_counted(records):
                for conn in conns:
                    conn.settimeout(0.2)
                    try:
                        data = conn.recv(1 << 16)
                    except TimeoutError:
                        continue
                    for record in decoders[conn].feed(data):
                        records[record["worker"]] = record
            for conn in conns:
                conn.close()
        assert _both_counted(records), records
        init = records["initializer"]["pipelines"]["Sequence Window"]
        assert init["messages_in"] == 1000
        assert init["messages_out"] == 500 and init["messages_forwarded"] == 500
        worker = records["worker-2"]["pipelines"]["Sequence Window"]
        assert worker["messages_arrived"] == 500 and worker["messages_out"] == 500
        assert init["steps"]["I might one to many this message!"]["messages_in"] == 1000
        assert worker["steps"]["Observe New Value"]["messages_out"] == 500
        assert sum(init["latency"].values()) == 1000


def _both_counted(records: dict) -> bool:
    return all(
        name in records and records[name]["totals"]["messages_out"] == 500
        for name in ("initializer", "worker-2")
    )


def test_sigterm_stops_each_process_keeping_its_files_and_the_same_commands_recover(tmp_path):
    """Scenario 95 (and 76 after it: a clean shutdown leaves a fresh start)."""
    with Cluster(tmp_path).start() as cluster:
        cluster.send(100, "-s", "100", "-i", "0")
        cluster.wait_windows(100)
        for name in ("worker-2", "initializer"):
            started = time.monotonic()
            assert cluster.kill(name, signal.SIGTERM) == 0, cluster.report()
            assert time.monotonic() - started < 2.0
        kept = sorted(p.name for p in tmp_path.glob("sequence_window-*"))
        assert "sequence_window-initializer.local-topology" in kept
        assert "sequence_window-worker-2.local-topology" in kept
        cluster.start_initializer()
        cluster.start_worker(1)
        cluster.wait_ready()
        for name in ("initializer", "worker-2"):
            # the lines were printed before the cluster was ready; wait for their reader
            out = cluster.wait_for(name, b"Restarting a listener ...").decode()
            assert "Recovering from recovery files!" in out
        cluster.send(100, "-s", "100", "-i", "0", start_from=100)
        windows = cluster.wait_windows(200)
        assert {199, 200} <= {w[-1] for w in windows}
        assert cluster.shutdown() == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert not list(tmp_path.glob("sequence_window-*"))
        cluster.start_initializer()
        cluster.start_worker(1)
        cluster.wait_ready()
        assert b"Recovering" not in cluster.procs["initializer"].stdout


def test_a_drain_that_cannot_finish_ends_with_an_error_and_keeps_the_files(tmp_path):
    """Scenario 77: the sink stops reading, so clean shutdown cannot drain within 30 s."""
    hold = threading.Event()
    with RawListener(rcvbuf=4096, hold=hold) as sink, Cluster(tmp_path) as cluster:
        cluster.start(sink=sink.address)
        sender = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", "1_000_000", "-y",
                      "-g", "12", "-u", "-w", "-s", "1000", "-i", "0", cwd=tmp_path)  # fmt: skip
        with sender:
            cluster.wait_for("initializer", b"paused its inputs for over 1 s", "stderr")
            result = run_tool("cluster_shutdown", cluster.externals[0])
            assert result.returncode == 0
            codes = {name: tool.wait(60) for name, tool in cluster.procs.items()}
        hold.set()
        assert codes == {"initializer": 1, "worker-2": 1}, cluster.report()
        for tool in cluster.procs.values():
            assert b"ERROR: clean shutdown could not drain: " in tool.stderr, cluster.report()
        assert list(tmp_path.glob("sequence_window-*.local-topology"))


def test_a_corrupt_control_frame_from_the_initializer_is_reported_and_the_worker_redials(tmp_path):
    """A fake initializer answers a worker's hello with a frame that is not JSON."""

    def hello(conn: socket.socket) -> dict:
        conn.settimeout(DEADLINE)
        (length,) = struct.unpack(">I", conn.recv(4, socket.MSG_WAITALL))
        return json.loads(conn.recv(length, socket.MSG_WAITALL))

    with Cluster(tmp_path) as cluster:
        cluster.out = f"127.0.0.1:{closed_port()}"
        host, port = cluster.control.split(":")
        with socket.create_server((host, int(port))) as fake:
            fake.settimeout(DEADLINE)
            worker = cluster.start_worker(1)
            first, _ = fake.accept()
            with first:
                assert accept_as_a_worker(first, b"control") == b""
                assert hello(first)["rejoin"] is False
                first.sendall(struct.pack(">I", 5) + b"nope!")
                worker.wait_stderr(lambda err: b"lost; reconnecting" in err)
                assert first.recv(1) == b""  # the worker closed it
            err = worker.stderr.decode()
            assert f"ERROR: control connection with {cluster.control}: " in err
            assert "control message is not JSON" in err
            again, _ = fake.accept()
            with again:
                accept_as_a_worker(again, b"control")
                assert hello(again)["rejoin"] is True
        assert worker.proc.poll() is None, worker.report()


@pytest.mark.parametrize("client", ["a sender that never stops", "a client that trickles"])
def test_clean_shutdown_ends_within_5_s_whatever_the_clients_do(tmp_path, client):
    with Cluster(tmp_path).start() as cluster:
        if client == "a sender that never stops":
            peer = Tool("sender", "-h", f"127.0.0.1:{cluster.in_port}", "-m", "1_000_000_000",
                        "-y", "-g", "12", "-u", "-w", "-s", "50", "-i", "1_000_000",
                        cwd=tmp_path)  # fmt: skip
            cluster.wait_windows(1_000)
        else:
            peer = socket.create_connection(("127.0.0.1", cluster.in_port))
            peer.sendall(struct.pack(">IQ", 8, 1) + b"\0")  # a window, then one byte of the next
            cluster.wait_windows(1)
        with peer:
            started = time.monotonic()
            codes = cluster.shutdown()
            took = time.monotonic() - started
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert took < 5.0, took
        assert not list(tmp_path.glob("sequence_window-*")), list(tmp_path.iterdir())
        assert cluster.receiver.stop() == 0  # all it printed is read
        count = max(w[-1] for w in cluster.windows())
        assert cluster.validate(count).returncode == 0  # what was read was delivered, in order
