"""Loopback ports, commands and waits for harnesses (tests, benchmarks) that start real processes.

A harness that gives a cluster its addresses finds a free port, releases it and
passes the number on. The kernel hands out ports of its ephemeral range on its
own, to every listener bound to port 0 (a worker's own control and data
listeners are) and to every outgoing connection; one given a port a harness
has just released takes it from the process about to listen there. So
:func:`unused_port` picks below that range, where the kernel never picks, and
never returns the same port twice in one process. :func:`tool_cmd` is how a
harness starts a tool or the runner, and :func:`wait_for_text` waits for a line in
a child's log against a deadline.
"""

from __future__ import annotations

import errno
import random
import socket
import subprocess
import sys
import time
from pathlib import Path

_issued: set[int] = set()
_RANDOM = random.Random()  # its own: a test that seeds the module's must not make ports collide
# picks below the ephemeral range before asking the kernel instead (a range nearly all taken)
_ATTEMPTS_BELOW = 1000


def unused_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing was bound to a moment ago, new to this process, and
    outside the kernel's ephemeral range when that leaves room (else one the kernel gave)."""
    low, high = _BELOW_EPHEMERAL
    attempts = 0
    while True:
        below = low < high and attempts < _ATTEMPTS_BELOW
        attempts += 1
        with socket.socket() as sock:
            try:
                sock.bind((host, _RANDOM.randrange(low, high) if below else 0))
            except OSError as err:
                if err.errno != errno.EADDRINUSE:
                    raise
                continue  # taken (or lingering): try another
            port = sock.getsockname()[1]
        if port not in _issued:
            _issued.add(port)
            return port


def _below_ephemeral(path: str = "/proc/sys/net/ipv4/ip_local_port_range") -> tuple[int, int]:
    """The ports from 10000 up to the kernel's ephemeral range (Linux's default range starts
    at 32768); an empty range where that cannot be read or leaves fewer than 1000."""
    try:
        first = int(Path(path).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return (0, 0)
    return (10_000, first) if first - 10_000 >= 1000 else (0, 0)


_BELOW_EPHEMERAL = _below_ephemeral()


def tool_cmd(name: str, *args: str) -> list[str]:
    """The command line of a tool: the runner as ``-m machida``, tools from wallaroo_tools."""
    module = "machida" if name == "machida" else f"wallaroo_tools.{name}"
    return [sys.executable, "-m", module, *args]


def wait_for_text(
    path: Path, text: str, proc: subprocess.Popen, deadline: float, name: str
) -> None:
    """Wait until ``text`` is in the log at ``path`` that ``proc`` (called ``name``) writes.

    ``deadline`` is a :func:`time.monotonic` time. Raises RuntimeError, ending
    with the log's tail, if ``proc`` exits without printing it or time runs out.
    """
    needle = text.encode()
    while True:
        code = proc.poll()  # before reading, so a line printed just before exiting counts
        if needle in path.read_bytes():
            return
        if code is not None:
            problem = f"exited ({code}) before printing {text!r}"
        elif time.monotonic() > deadline:
            problem = f"did not print {text!r} in time"
        else:
            time.sleep(0.02)
            continue
        raise RuntimeError(f"{name} {problem}:\n{path.read_text(errors='replace')[-2000:]}")
