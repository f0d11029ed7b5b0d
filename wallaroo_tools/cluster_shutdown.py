"""``cluster_shutdown HOST:PORT``: ask a running cluster to drain and exit.

It connects to a worker's external channel (its ``--external`` address),
writes the six-byte CleanShutdown frame ``00 00 00 02 00 0D`` (length 2,
id 13, no payload) and exits 0 once the worker has answered with the same
frame. Wallaroo's tool read no reply; ours waits for one (at most
:data:`ANSWER_TIMEOUT` seconds), so that a wrong address, where something
else listens, is an error instead of silence. Like Wallaroo's tool it takes
one positional address and no flags; Pony runtime options are ignored. The
frame comes from :mod:`machida.wire.external`.
"""

from __future__ import annotations

import socket
import sys

from machida.options import strip_pony_options
from machida.wire import external
from wallaroo_tools.external_client import ANSWER_TIMEOUT, CONNECT_TIMEOUT, split_address

USAGE = "Usage: cluster_shutdown HOST:PORT"


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
