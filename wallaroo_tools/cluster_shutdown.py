"""``cluster_shutdown HOST:PORT``: ask a running cluster to drain and exit.

It connects to a worker's external channel (its ``--external`` address),
writes the six-byte CleanShutdown frame ``00 00 00 02 00 0D`` (length 2,
id 13, no payload), closes the connection and exits 0. It reads no reply:
the cluster answers by shutting down. Like Wallaroo's tool it takes one
positional address and no flags; Pony runtime options are ignored. The frame
comes from :mod:`machida.wire.external`; :func:`send_once` is shared with
``external_sender``.
"""

from __future__ import annotations

import socket
import sys

from machida.options import parse_host_port, strip_pony_options
from machida.wire import external

USAGE = "Usage: cluster_shutdown HOST:PORT"
# Long enough for a loaded machine to accept, short enough that a harness
# whose worker is wedged gets an answer instead of a hang.
CONNECT_TIMEOUT = 10.0


def split_address(text: str) -> tuple[str, int] | None:
    """``"host:port"`` → ``(host, port)``, or None when it is not that shape."""
    address = parse_host_port(text) if text.count(":") == 1 else None
    return address if address and address[0] else None


def send_once(host: str, port: int, frame: bytes) -> bool:
    """Connect, write ``frame``, close normally (FIN). False if it could not connect or write."""
    try:
        with socket.create_connection((host, port), timeout=CONNECT_TIMEOUT) as sock:
            sock.sendall(frame)
            sock.shutdown(socket.SHUT_WR)
    except OSError:
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    words = strip_pony_options(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "--help":
        print(USAGE)
        return 0
    address = split_address(words[0]) if words else None
    if address is None:
        print(USAGE, file=sys.stderr)
        return 1
    host, port = address
    if not send_once(host, port, external.encode(external.CLEAN_SHUTDOWN)):
        print(f"Error: Unable to connect to {words[0]}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
