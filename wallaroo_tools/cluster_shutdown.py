"""``cluster_shutdown HOST:PORT``: ask a running cluster to drain and exit.

It connects to a worker's external channel (its ``--external`` address),
writes the six-byte CleanShutdown frame ``00 00 00 02 00 0D`` (length 2,
id 13, no payload) and exits 0 once the worker has answered with the same
frame. Wallaroo's tool read no reply; ours waits for one (at most
:data:`ANSWER_TIMEOUT` seconds), so that a wrong address, where something
else listens, is an error instead of silence. Like Wallaroo's tool it takes
one positional address and no flags; Pony runtime options are ignored. The
frame comes from :mod:`machida.wire.external`; :func:`send_once` is shared
with ``external_sender``.
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
# A worker answers as soon as it reads the request; the same bound as connecting.
ANSWER_TIMEOUT = 10.0


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


def request_shutdown(host: str, port: int) -> str:
    """Send CleanShutdown and wait for the worker's answer; "" once answered, else the error."""
    frame = external.encode(external.CLEAN_SHUTDOWN)
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError:
        return f"Error: Unable to connect to {host}:{port}"
    with sock:
        try:
            sock.sendall(frame)
            sock.settimeout(ANSWER_TIMEOUT)
            answer = _read_answer(sock, len(frame))
        except OSError:
            answer = b""
    if answer == frame:
        return ""
    return (f"Error: {host}:{port} did not acknowledge the CleanShutdown "
            f"(is it a worker's --external address?)")  # fmt: skip


def _read_answer(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def main(argv: list[str] | None = None) -> int:
    words = strip_pony_options(sys.argv[1:] if argv is None else argv)
    if words and words[0] == "--help":
        print(USAGE)
        return 0
    address = split_address(words[0]) if words else None
    if address is None:
        print(USAGE, file=sys.stderr)
        return 1
    error = request_shutdown(*address)
    if error:
        print(error.replace(f"{address[0]}:{address[1]}", words[0], 1), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
