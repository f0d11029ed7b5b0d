"""data_receiver: listening, framed and streaming output, bad peers, stopping.

Every test runs ``python -m wallaroo_tools.data_receiver -l 127.0.0.1:0``,
reads the real port from its ``Listening on`` line, and talks to it over
loopback (tools.md §2, scenarios 14-22). Waits are on output appearing or
the process exiting, against a deadline.
"""

from __future__ import annotations

import contextlib
import random
import signal
import socket
import struct
import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toolhelp import Tool, run_tool

from machida.wire.framing import FrameDecoder
from wallaroo_tools.data_receiver import parse_config


def frame(payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + payload


def window(n: int) -> bytes:
    return b"[%d,%d,%d,%d]" % (max(0, n - 6), max(0, n - 4), max(0, n - 2), n)


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=30)


def receiver(*args: str, **kw) -> Tool:
    return Tool("data_receiver", "-l", "127.0.0.1:0", *args, **kw)


@settings(max_examples=100, deadline=None)
@given(data=st.binary(max_size=400), cut=st.integers(1, 50))
def test_the_framer_it_uses_is_split_invariant_on_any_bytes(data, cut):
    """Scenario 56 for data_receiver's framing: no crash, no hang, same frames."""
    whole = FrameDecoder(max_length=300)
    expected = whole.feed(data)
    pieces = FrameDecoder(max_length=300)
    got = [f for i in range(0, len(data), cut) for f in pieces.feed(data[i : i + cut])]
    assert got == expected
    assert (pieces.error is None) == (whole.error is None)


def test_framed_lines_follow_the_listening_line():
    """Scenarios 14 and 21: the real port is printed and connectable."""
    with receiver("--framed") as tool:
        port = tool.listening_port()
        assert port != 0
        with connect(port) as client:
            client.sendall(frame(b"[0,0,0,1]") + frame(b"[0,0,0,2]"))
        expected = f"Listening on 127.0.0.1:{port}\n[0,0,0,1]\n[0,0,0,2]\n".encode()
        # Arrives while the process keeps running: the 100 ms flush, not the exit flush.
        tool.wait_stdout(lambda out: out == expected)
        assert tool.stop() == 0, tool.report()
        assert tool.stdout == expected and tool.stderr == b""


def test_streaming_copies_bytes_unchanged():
    """Scenario 15."""
    data = random.Random(15).randbytes(100_000)
    with receiver() as tool:
        port = tool.listening_port()
        with connect(port) as client:
            client.sendall(data)
        head = f"Listening on 127.0.0.1:{port}\n".encode()
        tool.wait_stdout(lambda out: len(out) >= len(head) + len(data))
        assert tool.stop() == 0, tool.report()
        assert tool.stdout == head + data


def test_one_byte_at_a_time_from_two_clients_gives_whole_lines():
    """Scenario 16."""
    payloads = {c: [b"client%d-%03d" % (c, i) for i in range(40)] for c in (1, 2)}

    def trickle(port: int, client: int) -> None:
        with connect(port) as sock:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            for byte in b"".join(frame(p) for p in payloads[client]):
                sock.send(bytes([byte]))

    with receiver("--framed") as tool:
        port = tool.listening_port()
        threads = [threading.Thread(target=trickle, args=(port, c)) for c in (1, 2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        tool.wait_stdout(lambda out: out.count(b"\n") == 81)
        lines = tool.stdout.split(b"\n")[1:-1]
        for client in (1, 2):
            assert [line for line in lines if line.startswith(b"client%d" % client)] == payloads[
                client
            ], tool.report()
        assert len(lines) == 80


def test_three_concurrent_workers_print_every_window_in_order():
    """Three sink connections writing windows in uneven chunks at the same time."""
    streams = {c: [window(n) for n in range(c, 3000, 3)] for c in (0, 1, 2)}

    def write(port: int, client: int) -> None:
        data = b"".join(frame(w) for w in streams[client])
        rng = random.Random(client)
        with connect(port) as sock:
            pos = 0
            while pos < len(data):
                step = rng.randint(1, 700)
                sock.sendall(data[pos : pos + step])
                pos += step

    with receiver("--framed") as tool:
        port = tool.listening_port()
        threads = [threading.Thread(target=write, args=(port, c)) for c in streams]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        total = sum(len(s) for s in streams.values())
        tool.wait_stdout(lambda out: out.count(b"\n") == total + 1)
        lines = tool.stdout.split(b"\n")[1:-1]
        for client, windows in streams.items():
            mine = [line for line in lines if int(line.rsplit(b",", 1)[1][:-1]) % 3 == client]
            assert mine == windows, tool.report()
        assert tool.stop() == 0


def test_no_write_prints_only_the_listening_line_and_expect_exits():
    """Scenario 17, with --expect ending the run once every frame is in."""
    with receiver("--framed", "--no-write", "--expect", "500") as tool:
        port = tool.listening_port()
        with connect(port) as client:
            client.sendall(b"".join(frame(window(n)) for n in range(1, 501)))
        assert tool.wait() == 0, tool.report()
        assert tool.stdout == f"Listening on 127.0.0.1:{port}\n".encode()


def test_expect_and_output_write_the_giles_layout(tmp_path):
    out = tmp_path / "received.txt"
    with receiver("--framed", "--expect", "3", "--output", str(out)) as tool:
        port = tool.listening_port()
        with connect(port) as client:
            client.sendall(frame(b"[0,0,0,1]") + frame(b"") + frame(b"[0,0,0,2]"))
        assert tool.wait() == 0, tool.report()
        assert tool.stdout.endswith(b"\n[0,0,0,1]\n\n[0,0,0,2]\n")
    data = out.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        length, ts = struct.unpack_from(">IQ", data, pos)
        records.append(data[pos + 12 : pos + 12 + length])
        pos += 12 + length
        assert ts > 1_500_000_000 * 10**9  # wall-clock nanoseconds
    assert records == [b"[0,0,0,1]", b"", b"[0,0,0,2]"]


def test_zero_length_frame_prints_an_empty_line_and_stays_in_sync():
    """Scenario 18."""
    with receiver("--framed") as tool:
        port = tool.listening_port()
        with connect(port) as client:
            client.sendall(frame(b"[0,0,0,1]") + frame(b"") + frame(b"[0,0,0,2]"))
        tool.wait_stdout(lambda out: out.endswith(b"\n[0,0,0,1]\n\n[0,0,0,2]\n"))
        assert tool.stop() == 0


def test_oversize_frame_closes_only_that_connection():
    """Scenario 19."""
    with receiver("--framed") as tool:
        port = tool.listening_port()
        good = connect(port)
        with connect(port) as bad:
            bad.sendall(b"\xff\xff\xff\xff" + b"x" * 10)
            # Closed by the receiver, with a FIN or (just as closed) a reset.
            with contextlib.suppress(ConnectionResetError):
                assert bad.recv(10) == b""
        with good:
            good.sendall(b"".join(frame(window(n)) for n in range(1, 101)))
        tool.wait_stdout(lambda out: out.count(b"\n") == 101)
        err = tool.wait_stderr(lambda e: b"\n" in e).decode()
        assert err.count("\n") == 1 and err.startswith("ERROR: 127.0.0.1:"), tool.report()
        assert err.endswith(": frame length 4294967295 exceeds 16 MiB\n")
        assert tool.proc.poll() is None
        assert tool.stop() == 0


def test_close_inside_a_frame_warns_with_the_byte_count():
    """Scenario 20."""
    with receiver("--framed") as tool:
        port = tool.listening_port()
        with connect(port) as client:
            client.sendall(frame(b"[0,0,0,1]") + frame(b"[0,0,0,2]")[:7])
        err = tool.wait_stderr(lambda e: b"\n" in e)
        assert b"WARNING" in err and b"7 bytes" in err and err.count(b"\n") == 1, tool.report()
        tool.wait_stdout(lambda out: out.endswith(b"\n[0,0,0,1]\n"))
        assert tool.stop() == 0


def test_garbage_on_one_connection_does_not_disturb_another():
    garbage = random.Random(55).randbytes(10_000)
    with receiver("--framed") as tool:
        port = tool.listening_port()
        with connect(port) as noisy:
            noisy.sendall(garbage)
        with connect(port) as clean:
            clean.sendall(b"".join(frame(window(n)) for n in range(1, 201)))
        lines = [window(n) for n in range(1, 201)]
        tool.wait_stdout(lambda out: out.endswith(b"\n".join(lines) + b"\n"))
        err = tool.wait_stderr(lambda e: b"\n" in e)
        assert err.count(b"\n") == 1 and (b"ERROR" in err or b"WARNING" in err), tool.report()
        assert tool.stop() == 0


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_signal_while_idle_flushes_and_exits_0(sig):
    """Scenario 22."""
    with receiver("--framed") as tool:
        port = tool.listening_port()
        assert tool.stop(sig) == 0, tool.report()
        assert tool.stdout == f"Listening on 127.0.0.1:{port}\n".encode()
        assert tool.stderr == b""


def test_missing_and_malformed_listen():
    result = run_tool("data_receiver", "--framed")
    assert result.returncode == 1
    assert result.stderr.startswith(b"Must supply required '--listen' argument\n")
    result = run_tool("data_receiver", "-l", "127.0.0.1")
    assert result.returncode == 1
    assert b"'--listen' argument should be in format: '127.0.0.1:7669\n" in result.stderr


@pytest.mark.parametrize("listen", ["127.0.0.1:\u00b2", "127.0.0.1:\u0663", "127.0.0.1:65536"])
def test_a_port_that_is_not_ascii_digits_up_to_65535_is_the_format_error(listen):
    """'²' passes str.isdigit() but not int(), and '٣' is int 3: neither is a port."""
    result = run_tool("data_receiver", "-l", listen)
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr == (
        b"'--listen' argument should be in format: '127.0.0.1:7669\n"
        b"Usage: data_receiver --listen HOST:PORT [--framed] [--no-write] [--expect N] "
        b"[--output FILE] [--exactly-once]\n"
    )
    assert parse_config(["-l", ":7002"]).host == ""  # an empty host is still every address


def test_bad_flag_prints_error_and_usage():
    result = run_tool("data_receiver", "-l", "127.0.0.1:0", "--bogus")
    assert result.returncode == 1 and result.stdout == b""
    assert result.stderr.startswith(b"Error: unknown option --bogus\nUsage: data_receiver")


def test_port_in_use_is_unable_to_listen():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_tool("data_receiver", "-l", f"127.0.0.1:{port}")
    assert result.returncode == 1 and b"Unable to listen" in result.stderr


def test_pony_options_and_short_forms_parse():
    config = parse_config(["--ponythreads=1", "--ponynoblock", "-l", "127.0.0.1:7002", "-f", "-n"])
    assert (config.host, config.port) == ("127.0.0.1", 7002)
    assert config.framed and not config.write
