"""A real 2-worker cluster over loopback TCP: the seed README's run and its guarantees."""

from __future__ import annotations

import struct

from clusterhelp import Cluster
from toolhelp import RawListener, wait_until

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
        cluster.out = sink.address
        cluster.start_initializer()
        cluster.start_worker(1)
        cluster.wait_ready()
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
        codes = cluster.shutdown()
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert len(cluster.windows()) == 10_000
        assert cluster.validate(10_000).returncode == 0
        assert not list(tmp_path.glob("sequence_window-*")), list(tmp_path.iterdir())


def test_shutdown_sent_to_worker_2_stops_the_whole_cluster(tmp_path):
    with Cluster(tmp_path) as cluster:
        cluster.start()
        cluster.send(2000, "-s", "500", "-i", "0")
        codes = cluster.shutdown(via=1)
        assert codes == {"initializer": 0, "worker-2": 0}, cluster.report()
        assert len(cluster.windows()) == 2000


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
