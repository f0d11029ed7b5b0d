"""Helpers for the tool tests: real processes, raw loopback peers, explicit waits.

Tools run as ``sys.executable -m wallaroo_tools.<tool>``; their stdout and
stderr are collected by threads so a test can wait for a line against a
deadline instead of sleeping. :class:`RawListener` plays a source or an
external channel (it records every chunk with its arrival time), and
:class:`Tool` plays anything long-running such as data_receiver. Every
failure message carries the child's output via :meth:`Tool.report` or
:func:`explain`.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import threading
import time
from collections.abc import Callable

from machida.cluster.secret import cluster_secret
from machida.wire.auth import CHALLENGE, RESPONSE, AcceptorHandshake, DiallerHandshake
from wallaroo_tools.loopback import tool_cmd, unused_port

DEADLINE = 30.0
HOLD_LIMIT = 120.0


def run_tool(name: str, *args: str, cwd=None, timeout: float = DEADLINE, prefix=()):
    """Run a tool to completion; returns the CompletedProcess (bytes output). ``prefix`` runs
    it through another command first (``ip netns exec NS``)."""
    command = [*prefix, *tool_cmd(name, *args)]
    return subprocess.run(command, cwd=cwd, capture_output=True, timeout=timeout)


def explain(result) -> str:
    """A failure message showing what a finished child printed."""
    return (
        f"exit {result.returncode}\n--- stdout ---\n{result.stdout[-4000:]!r}\n"
        f"--- stderr ---\n{result.stderr[-4000:].decode(errors='replace')}"
    )


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.005)


def closed_port() -> int:
    """A loopback port with nobody listening, never the same one twice in a test run."""
    return unused_port()


class _Collector:
    """Reads one pipe to EOF in a thread, keeping everything."""

    def __init__(self, pipe) -> None:
        self.data = bytearray()
        self.cond = threading.Condition()
        self.eof = pipe is None  # not a pipe of ours (e.g. a terminal the test reads)
        self._thread = threading.Thread(target=self._run, args=(pipe,), daemon=True)
        if pipe is not None:
            self._thread.start()

    def _run(self, pipe) -> None:
        fd = pipe.fileno()
        while True:
            chunk = os.read(fd, 1 << 16)
            with self.cond:
                if not chunk:
                    self.eof = True
                else:
                    self.data += chunk
                self.cond.notify_all()
            if not chunk:
                return

    def wait_for(self, predicate: Callable[[bytes], bool], timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: predicate(bytes(self.data)) or self.eof, timeout)

    def join(self, timeout: float) -> None:
        if self._thread.is_alive():
            self._thread.join(timeout)


class Tool:
    """A running tool process whose output is collected as it comes."""

    def __init__(self, name: str, *args: str, cwd=None, prefix=(), **popen) -> None:
        self.args = args
        pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.PIPE, **popen}
        self.proc = subprocess.Popen([*prefix, *tool_cmd(name, *args)], cwd=cwd, **pipes)
        self._out = _Collector(self.proc.stdout)
        self._err = _Collector(self.proc.stderr)

    @property
    def stdout(self) -> bytes:
        with self._out.cond:
            return bytes(self._out.data)

    @property
    def stderr(self) -> bytes:
        with self._err.cond:
            return bytes(self._err.data)

    def report(self) -> str:
        return (
            f"args {self.args}\nexit {self.proc.poll()}\n--- stdout ---\n{self.stdout[-4000:]!r}"
            f"\n--- stderr ---\n{self.stderr[-4000:].decode(errors='replace')}"
        )

    def wait_stdout(self, predicate: Callable[[bytes], bool], timeout: float = DEADLINE) -> bytes:
        self._out.wait_for(predicate, timeout)
        data = self.stdout
        assert predicate(data), f"stdout never matched\n{self.report()}"
        return data

    def wait_stderr(self, predicate: Callable[[bytes], bool], timeout: float = DEADLINE) -> bytes:
        self._err.wait_for(predicate, timeout)
        data = self.stderr
        assert predicate(data), f"stderr never matched\n{self.report()}"
        return data

    def listening_port(self, timeout: float = DEADLINE) -> int:
        """data_receiver's real port, read from its ``Listening on HOST:PORT`` line."""
        out = self.wait_stdout(lambda d: b"\n" in d, timeout)
        line = out.split(b"\n", 1)[0].decode()
        assert line.startswith("Listening on "), self.report()
        return int(line.rsplit(":", 1)[1])

    def wait(self, timeout: float = DEADLINE) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"process did not exit\n{self.report()}") from None
        self._out.join(5)
        self._err.join(5)
        return code

    def stop(self, sig: int = signal.SIGTERM, timeout: float = DEADLINE) -> int:
        self.proc.send_signal(sig)
        return self.wait(timeout)

    def __enter__(self) -> Tool:
        return self

    def __exit__(self, *exc) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Received:
    """What one accepted connection delivered: chunks with their arrival times."""

    def __init__(self) -> None:
        self.chunks: list[tuple[float, bytes]] = []
        self.done = threading.Event()

    @property
    def data(self) -> bytes:
        return b"".join(chunk for _, chunk in list(self.chunks))

    @property
    def size(self) -> int:
        return sum(len(chunk) for _, chunk in list(self.chunks))


class RawListener:
    """A loopback TCP peer that records what clients send.

    ``accept=False`` never accepts, so :meth:`has_pending` can tell whether a
    client connected at all. ``rcvbuf`` shrinks the receive buffer (inherited
    by accepted sockets) and ``hold`` (an Event) delays reading until set, so a
    test can make a sender meet back-pressure. ``close_after`` closes each
    connection once that many bytes have arrived. ``reset`` reads nothing and
    resets each connection (RST, from an SO_LINGER 0 close) as soon as data waits.
    ``answer`` is written back once, after the first bytes arrive.
    """

    def __init__(
        self, accept=True, rcvbuf=None, hold=None, close_after=None, reset=False, answer=None
    ):
        self.sock = socket.socket()
        if rcvbuf:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.address = f"127.0.0.1:{self.port}"
        self.connections: list[Received] = []
        self.hold = hold
        self.close_after = close_after
        self.reset = reset
        self.answer = answer
        if accept:
            threading.Thread(target=self._accept, daemon=True).start()

    def has_pending(self) -> bool:
        return bool(select.select([self.sock], [], [], 0)[0])

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            received = Received()
            self.connections.append(received)
            threading.Thread(target=self._read, args=(conn, received), daemon=True).start()

    def _read(self, conn: socket.socket, received: Received) -> None:
        if self.reset:
            select.select([conn], [], [], HOLD_LIMIT)
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()
            received.done.set()
            return
        if self.hold is not None:
            # longer than any deadline of the runner, so a held peer stays held
            self.hold.wait(HOLD_LIMIT)
        with conn:
            while True:
                try:
                    chunk = conn.recv(1 << 20)
                except OSError:
                    break
                if not chunk:
                    break
                received.chunks.append((time.monotonic(), chunk))
                if self.answer is not None and len(received.chunks) == 1:
                    conn.sendall(self.answer)
                if self.close_after is not None and received.size >= self.close_after:
                    break
        received.done.set()

    def wait_closed(self, index: int = 0, timeout: float = DEADLINE) -> Received:
        """The index-th connection, once its client has closed it."""
        wait_until(lambda: len(self.connections) > index, timeout, "a connection")
        received = self.connections[index]
        assert received.done.wait(timeout), "the client never closed its connection"
        return received

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> RawListener:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def accept_as_a_worker(conn: socket.socket, channel: bytes, secret: bytes | None = None) -> bytes:
    """Play the accepting side of the cluster-secret handshake on ``conn`` (a fake initializer
    or worker); returns what the dialler sent after it. Without ``secret``, the default one."""
    handshake = AcceptorHandshake(cluster_secret() if secret is None else secret, channel)
    conn.settimeout(DEADLINE)
    conn.sendall(handshake.start())
    while not handshake.done:
        data = conn.recv(RESPONSE)
        assert data and handshake.error is None, "the dialler gave up the handshake"
        reply = handshake.feed(data)
        assert handshake.error is None, handshake.error
        conn.sendall(reply)
    return handshake.rest


def dial_as_a_worker(address: str, channel: bytes, secret: bytes | None = None) -> socket.socket:
    """A connection to a worker's control or data listener that has proved ``secret`` (by
    default the cluster's own); AssertionError if the worker refused it."""
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
    handshake = DiallerHandshake(cluster_secret() if secret is None else secret, channel)
    while not handshake.done:
        data = sock.recv(CHALLENGE)
        assert data, "the worker closed the connection during the handshake"
        sock.sendall(handshake.feed(data))
        assert handshake.error is None, handshake.error
    return sock
