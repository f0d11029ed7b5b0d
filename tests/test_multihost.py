"""Two workers on two hosts: network namespaces joined by a veth pair, as two machines on a LAN.

Host A (198.18.0.1, an address of the benchmarking range, inside its namespace
only) runs the receiver, the initializer and the sender; host B (198.18.0.2)
runs worker-2, with no address flags but ``--control``: its listeners go on the
address that reaches the initializer. The run is validated strictly; a worker
started on host B with another secret is refused. Creating namespaces needs
root; where the kernel refuses, the test is skipped and says why.
"""

from __future__ import annotations

import os
import subprocess

import pytest
from test_hardening import listening
from toolhelp import Tool, run_tool, wait_until

A, B = "198.18.0.1", "198.18.0.2"
READY = b"Application has successfully initialized."


def ip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True)


@pytest.fixture
def two_hosts():
    """Two namespaces joined by a veth pair; yields the ``ip netns exec`` prefix of each."""
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root")
    tag = os.getpid() % 100_000
    host_a, host_b, veth_a, veth_b = f"swa{tag}", f"swb{tag}", f"swva{tag}", f"swvb{tag}"
    steps = [
        ("netns", "add", host_a), ("netns", "add", host_b),
        ("link", "add", veth_a, "type", "veth", "peer", "name", veth_b),
        ("link", "set", veth_a, "netns", host_a), ("link", "set", veth_b, "netns", host_b),
        ("-n", host_a, "addr", "add", f"{A}/24", "dev", veth_a),
        ("-n", host_b, "addr", "add", f"{B}/24", "dev", veth_b),
        ("-n", host_a, "link", "set", veth_a, "up"), ("-n", host_b, "link", "set", veth_b, "up"),
        ("-n", host_a, "link", "set", "lo", "up"), ("-n", host_b, "link", "set", "lo", "up"),
    ]  # fmt: skip
    try:
        for step in steps:
            done = ip(*step)
            if done.returncode != 0:
                pytest.skip(f"the kernel refused 'ip {' '.join(step)}': {done.stderr.strip()}")
        yield ("ip", "netns", "exec", host_a), ("ip", "netns", "exec", host_b)
    finally:
        for host in (host_a, host_b):
            ip("netns", "del", host)


def test_a_cluster_across_two_hosts_validates_and_refuses_a_stranger(tmp_path, two_hosts):
    on_a, on_b = two_hosts
    common = ["--application-module", "sequence_window", "--in", f"{A}:7010",
              "--metrics", f"{A}:5001", "--control", f"{A}:6000", "--resilience-dir",
              str(tmp_path), "--ponythreads=1"]  # fmt: skip
    other = tmp_path / "another-secret"
    other.write_text("a" * 64)
    other.chmod(0o600)
    with Tool("data_receiver", "-l", f"{A}:0", "--framed", cwd=tmp_path, prefix=on_a) as rx:
        out = ["--out", f"{A}:{rx.listening_port()}"]
        initializer = Tool("machida", *common, *out, "--data", f"{A}:6001", "--external",
                           f"{A}:5050", "--worker-count", "2", "--cluster-initializer",
                           cwd=tmp_path, prefix=on_a)  # fmt: skip
        worker = Tool("machida", *common, *out, "--name", "worker-2", cwd=tmp_path, prefix=on_b)
        with initializer, worker:
            initializer.wait_stdout(lambda o: READY in o)
            assert {host for host, _ in listening(worker.proc.pid)} == {B}
            sent = run_tool("sender", "-h", f"{A}:7010", "-m", "1000", "-y", "-g", "12", "-u",
                            "-w", "-s", "50", "-i", "0", prefix=on_a)  # fmt: skip
            assert sent.returncode == 0, sent.stderr
            wait_until(lambda: rx.stdout.count(b"\n") > 1000, 30, "1000 windows")
            windows = rx.stdout.split(b"\n")[1:-1]
            assert {w.rsplit(b",", 1)[1] for w in windows} >= {b"999]", b"1000]"}
            stranger = Tool("machida", *common, *out, "--name", "worker-3",
                            "--cluster-secret-file", str(other), cwd=tmp_path,
                            prefix=on_b)  # fmt: skip
            with stranger:
                initializer.wait_stderr(lambda e: f"control connection from {B}:".encode() in e)
                stranger.wait_stderr(lambda e: b"refused this worker's link" in e)
            assert run_tool("cluster_shutdown", f"{A}:5050", prefix=on_a).returncode == 0
            assert (initializer.wait(), worker.wait()) == (0, 0), worker.report()
        received = tmp_path / "received.txt"
        received.write_bytes(rx.stdout)
        verdict = run_tool("validator", "-i", str(received), "-e", "1000")
        assert verdict.returncode == 0, verdict.stderr
