"""The client side of a worker's external channel, shared by the tools that speak it.

``cluster_shutdown``, ``external_sender`` and ``cluster_shrinker`` connect to a
worker's ``--external`` address, write one frame of :mod:`machida.wire.external`
and, for the requests that have an answer (a shrink, the queries), read one
frame back on the same connection. :func:`answer_lines` prints an answer the way
Wallaroo 0.5.0's tools did.
"""

from __future__ import annotations

import json
import socket

from machida.options import UsageError, parse_host_port
from machida.wire import external

# Long enough for a loaded machine to accept, short enough that a harness
# whose worker is wedged gets an answer instead of a hang.
CONNECT_TIMEOUT = 10.0
# A worker answers as soon as it has read the request; the same bound as connecting.
ANSWER_TIMEOUT = 10.0


class NoAnswer(Exception):
    """The worker could not be reached or did not answer; the message is the line to print."""


def external_address(target: str | None) -> tuple[str, int]:
    """The ``--external`` option of a tool, checked; UsageError as Wallaroo's tools said it."""
    if target is None:
        raise UsageError("Must supply required '--external' argument")
    address = split_address(target)
    if address is None:
        raise UsageError("'--external' argument should be in format: '127.0.0.1:5050")
    return address


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


def ask(host: str, port: int, frame: bytes) -> tuple[int, str]:
    """Send ``frame`` and return the worker's answer ``(id, text)``; NoAnswer if none came."""
    try:
        sock = socket.create_connection((host, port), timeout=CONNECT_TIMEOUT)
    except OSError:
        raise NoAnswer(f"Failed to connect to {host}:{port}") from None
    decoder = external.ExternalFrameDecoder()
    with sock:
        try:
            sock.sendall(frame)
            sock.settimeout(ANSWER_TIMEOUT)
            while True:
                data = sock.recv(65536)
                messages = decoder.feed(data) if data else []
                if messages:
                    return messages[0]
                if not data or decoder.error is not None:
                    break
        except OSError:
            pass
    raise NoAnswer(f"{host}:{port} did not answer (is it a worker's --external address?)")


def answer_lines(msg_id: int, text: str, as_json: bool = False) -> list[str]:
    """What the tools print for an answer of the external channel."""
    if as_json and msg_id != external.SHRINK_ERROR_RESPONSE:
        return [text]
    if msg_id == external.SHRINK_QUERY_RESPONSE:
        names = json.loads(text)["node_names"]
        return [f"Eligible for shrink: Node count: {len(names)}, Nodes: |{_listed(names)}|"]
    if msg_id == external.SHRINK_ERROR_RESPONSE:
        return [f"Cluster shrink response: {text}"]
    if msg_id == external.PARTITION_QUERY_RESPONSE:
        return ["Partition Distribution:", text]
    if msg_id == external.PARTITION_COUNT_QUERY_RESPONSE:
        return ["Partition Distribution (counts):", text]
    if msg_id == external.CLUSTER_STATUS_QUERY_RESPONSE:
        status = json.loads(text)
        processing = "true" if status["processing_messages"] else "false"
        return ["Cluster Status:", f"Processing messages: {processing}, "
                f"Worker count: {status['worker_count']}, "
                f"Workers: |{_listed(status['worker_names'])}|"]  # fmt: skip
    return [f"Received external message {msg_id}: {text}"]


def _listed(names: list[str]) -> str:
    return "".join(f"{name}," for name in names)
