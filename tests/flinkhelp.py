"""Helpers for the machida-flink tests: the process, its receivers, raw senders, a cluster.

``machida-flink`` runs as ``sys.executable -m machida_flink`` with its output
collected like any tool's (:class:`toolhelp.Tool`), so tests wait for printed
lines against a deadline. A JVM and a Flink job take seconds to start, hence
the longer :data:`START_S`.
"""

from __future__ import annotations

import os
import signal
import socket
import struct
import subprocess
import sys
from pathlib import Path

from toolhelp import Tool, _Collector, closed_port, run_tool

READY = b"Application has successfully initialized."
# A JVM, a MiniCluster (or a submission) and a job's tasks, on 2 busy cores.
START_S = 180.0
FLOW_S = 120.0


class FlinkProcess(Tool):
    """A running ``machida-flink`` whose stdout and stderr are collected as they come."""

    def __init__(self, *args: str, cwd=None) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "machida_flink", *args],
            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        self._out = _Collector(self.proc.stdout)
        self._err = _Collector(self.proc.stderr)

    def wait_ready(self) -> None:
        self.wait_stdout(lambda out: READY in out or b"Flink job: FAILED" in out, START_S)
        assert READY in self.stdout, self.report()


def receiver(cwd) -> tuple[Tool, str]:
    """A ``data_receiver --framed`` on a free port, and its address."""
    tool = Tool("data_receiver", "-l", "127.0.0.1:0", "--framed", cwd=cwd)
    return tool, f"127.0.0.1:{tool.listening_port()}"


def lines(tool: Tool) -> list[bytes]:
    """The payload lines a framed data_receiver printed (complete lines only)."""
    return tool.stdout.split(b"\n")[1:-1]


def wait_lines(tool: Tool, count: int, timeout: float = FLOW_S) -> list[bytes]:
    tool.wait_stdout(lambda out: out.count(b"\n") - 1 >= count, timeout)
    return lines(tool)


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def u64_frames(values) -> bytes:
    return b"".join(frame(struct.pack(">Q", v)) for v in values)


def send(port: int, data: bytes, chunk: int = 0) -> None:
    """Connect to a source, write ``data`` (in pieces of ``chunk`` bytes if given), close."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        step = chunk or len(data) or 1
        for start in range(0, len(data), step):
            sock.sendall(data[start : start + step])


def shutdown(flink: FlinkProcess, external: str) -> int:
    """``cluster_shutdown`` to machida-flink's external channel; its exit status."""
    result = run_tool("cluster_shutdown", external)
    assert result.returncode == 0, result.stderr
    return flink.wait(START_S)


def descendants(pid: int) -> list[int]:
    """The processes ``pid`` started, and theirs (Linux /proc)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def kill_tree(flink: FlinkProcess) -> list[int]:
    """``kill -9`` machida-flink and every process under it (its JVM) at once; their pids."""
    tree = [flink.proc.pid, *descendants(flink.proc.pid)]
    for pid in tree:
        os.kill(pid, signal.SIGKILL)
    return tree


def paced_sender(port: int, count: int, per_50ms: int, start_from: int = 0) -> subprocess.Popen:
    """giles ``sender`` with ``count`` u64 values after ``start_from``, ``per_50ms`` every
    50 ms."""
    return subprocess.Popen(
        [sys.executable, "-m", "wallaroo_tools.sender", "-h", f"127.0.0.1:{port}",
         "-m", str(count), "--start-from", str(start_from), "-y", "-g", "12", "-u", "-w",
         "-s", str(per_50ms), "-i", "50_000_000"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip


def finals(total: int) -> set[bytes]:
    """The last window of each parity of a 1..total sequence."""
    return {f"[{total - 7},{total - 5},{total - 3},{total - 1}]".encode(),
            f"[{total - 6},{total - 4},{total - 2},{total}]".encode()}  # fmt: skip


def windows(raw: list[bytes]) -> list[list[int]]:
    return [[int(x) for x in line.strip(b"[]").split(b",")] for line in raw]


__all__ = ["FlinkProcess", "closed_port", "frame", "receiver", "send", "shutdown"]
