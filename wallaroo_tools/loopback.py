"""Loopback ports, commands and waits for harnesses (tests, benchmarks) that start real processes.

A harness that gives a cluster its addresses asks the kernel for a free port,
releases it and passes the number on. The kernel may hand a released port out
again at once, and a cluster given one port for two of its addresses fails to
bind the second; :func:`unused_port` never returns the same port twice in one
process. :func:`tool_cmd` is how a harness starts a tool or the runner, and
:func:`wait_for_text` waits for a line in a child's log against a deadline.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

_issued: set[int] = set()


def unused_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` that nothing was bound to a moment ago, new to this process."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = sock.getsockname()[1]
        if port not in _issued:
            _issued.add(port)
            return port


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
