"""The harnesses' ports (wallaroo_tools/loopback.py): free, never twice, and never ones the
kernel could hand to a worker's port-0 listener or an outgoing connection meanwhile."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from wallaroo_tools import loopback


def ephemeral_range() -> tuple[int, int]:
    low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
    return int(low), int(high)


def test_ports_are_free_distinct_and_below_the_kernels_own():
    ports = [loopback.unused_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    low, _ = ephemeral_range()
    if low - 10_000 >= 1000:
        assert all(10_000 <= port < low for port in ports)
    for port in ports[:20]:  # each can be listened on
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))
            sock.listen()


def test_a_port_in_use_is_never_given(monkeypatch):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        monkeypatch.setattr(loopback, "_BELOW_EPHEMERAL", (port, port + 2))
        monkeypatch.setattr(loopback, "_issued", set())
        assert loopback.unused_port() == port + 1
        assert loopback.unused_port() not in (port, port + 1)  # none left: the kernel picks


@pytest.mark.parametrize(
    "text, expected",
    [("32768\t60999\n", (10_000, 32768)), ("1024 65535\n", (0, 0)), ("10500 60999", (0, 0)),
     ("", (0, 0)), (None, (0, 0))],
)  # fmt: skip
def test_the_range_below_the_kernels(tmp_path, text, expected):
    path = tmp_path / "ip_local_port_range"
    if text is not None:
        path.write_text(text)
    assert loopback._below_ephemeral(str(path)) == expected


def test_without_room_below_it_the_kernel_picks(monkeypatch):
    monkeypatch.setattr(loopback, "_BELOW_EPHEMERAL", (0, 0))
    port = loopback.unused_port()
    low, high = ephemeral_range()
    assert low <= port <= high


def test_an_address_that_is_not_here_is_an_error_not_a_spin():
    with pytest.raises(OSError):
        loopback.unused_port("192.0.2.1")  # TEST-NET-1: not an address of this machine
