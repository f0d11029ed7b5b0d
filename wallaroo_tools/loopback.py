"""Loopback ports for harnesses (tests, benchmarks) that start real processes.

A harness that gives a cluster its addresses asks the kernel for a free port,
releases it and passes the number on. The kernel may hand a released port out
again at once, and a cluster given one port for two of its addresses fails to
bind the second; :func:`unused_port` never returns the same port twice in one
process.
"""

from __future__ import annotations

import socket

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
