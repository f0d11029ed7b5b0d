"""sender (giles sender): record bytes, pacing, ending, sent.txt and the command line.

Pure tests drive the sans-I/O record sources and the pacing helpers; the
rest run ``python -m wallaroo_tools.sender`` against a :class:`RawListener`
on an ephemeral loopback port (tools.md §1, scenarios 1-13).
"""

from __future__ import annotations

import fcntl
import os
import pty
import random
import re
import struct
import termios
import threading
import time
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toolhelp import RawListener, Tool, closed_port, explain, run_tool

from machida.wire.framing import FrameDecoder
from wallaroo_tools import sender
from wallaroo_tools.sender import (
    BatchSizer,
    CounterRecords,
    DecimalRecords,
    ItemRecords,
    SenderConfig,
    file_items,
    make_records,
    next_tick,
    parse_config,
)

U64 = ["-y", "-g", "12", "-u"]


def u64_records(values, partition=b"") -> bytes:
    return b"".join(struct.pack(">IQ", 8 + len(partition), v) + partition for v in values)


def send(listener: RawListener, *args: str, cwd) -> tuple:
    """Run the sender to completion into ``listener``; returns (result, bytes received)."""
    result = run_tool("sender", "-h", listener.address, *args, cwd=cwd)
    assert result.returncode == 0, explain(result)
    assert result.stdout == b"Connected\n", explain(result)
    return result, listener.wait_closed().data


# ---------------------------------------------------------------- records, no sockets


def test_canonical_u64_records_match_the_spec_examples():
    records = CounterRecords(0, struct.pack(">I", 8))
    assert records.take(1).wire == bytes.fromhex("000000080000000000000001")
    records = CounterRecords(999, struct.pack(">I", 8))
    assert records.take(1).wire == bytes.fromhex("0000000800000000000003E8")


def test_counter_wraps_at_two_to_the_64():
    records = CounterRecords(2**64 - 2, struct.pack(">I", 8))
    assert records.take(3).wire == u64_records([2**64 - 1, 0, 1])


def test_u64_without_binary_is_framed_twice_and_logs_the_inner_record():
    config = SenderConfig("h", "1", 2, u64=True, partition=b"ab")
    warnings = []
    batch = make_records(config, warnings.append).take(2, want_items=True)
    inner = [struct.pack(">IQ", 10, v) + b"ab" for v in (1, 2)]
    assert batch.wire == b"".join(struct.pack(">I", 14) + r for r in inner)
    assert batch.items == inner
    assert len(warnings) == 1 and "--binary --msg-size 12" in warnings[0]


def test_text_counter_frames_the_decimal():
    batch = DecimalRecords(8).take(3, want_items=True)
    assert batch.wire == b"\x00\x00\x00\x019\x00\x00\x00\x0210\x00\x00\x00\x0211"
    assert batch.items == [b"9", b"10", b"11"]


@settings(max_examples=60, deadline=None)
@given(
    start=st.one_of(st.integers(0, 10**6), st.integers(2**64 - 50, 2**64 - 1)),
    sizes=st.lists(st.integers(1, 40), min_size=1, max_size=12),
    partition=st.binary(max_size=5),
)
def test_counter_batches_of_any_size_make_the_same_stream(start, sizes, partition):
    prefix = struct.pack(">I", 8 + len(partition))
    split = CounterRecords(start, prefix, partition)
    wire = b"".join(split.take(n).wire for n in sizes)
    values = [(start + i) % 2**64 for i in range(1, sum(sizes) + 1)]
    assert wire == u64_records(values, partition)
    assert wire == CounterRecords(start, prefix, partition).take(sum(sizes)).wire


@settings(max_examples=60, deadline=None)
@given(
    items=st.lists(st.binary(max_size=20), max_size=30),
    sizes=st.lists(st.integers(1, 7), min_size=1, max_size=10),
    cut=st.integers(1, 50),
)
def test_item_records_skip_empties_and_decode_back_in_any_split(items, sizes, cut):
    records = ItemRecords(iter(items), frame=True)
    batches = [records.take(n) for n in sizes]
    wire = b"".join(b.wire for b in batches)
    expected = [item for item in items if item][: sum(sizes)]
    assert sum(b.count for b in batches) == len(expected)
    decoder = FrameDecoder()
    decoded = [f for i in range(0, len(wire), cut) for f in decoder.feed(wire[i : i + cut])]
    assert decoded == expected and decoder.pending == 0
    assert records.exhausted == (len(expected) < sum(sizes))


def test_files_are_read_in_order_and_repeat_stops_when_a_pass_is_empty(tmp_path):
    a, b, empty = tmp_path / "a", tmp_path / "b", tmp_path / "e"
    a.write_bytes(b"x\r\ny\n")
    b.write_bytes(b"\nz")
    empty.write_bytes(b"\n\n")
    once = list(file_items(sender.text_lines, [str(a), str(b)], repeat=False))
    assert once == [b"x", b"y", b"", b"z"]
    again = file_items(sender.text_lines, [str(a), str(b)], repeat=True)
    assert [next(again) for _ in range(8)] == once * 2
    assert list(file_items(sender.text_lines, [str(empty)], repeat=True)) == [b"", b""]


def test_vary_by_redraws_the_extra_every_1000_ticks():
    sizer = BatchSizer(10, vary_by=5, rng=random.Random(7))
    sizes = [sizer.next(10**9) for _ in range(3000)]
    assert sizes[:1000] == [10] * 1000
    assert len(set(sizes[1000:2000])) == 1 and len(set(sizes[2000:])) == 1
    assert all(10 <= s < 15 for s in sizes)
    assert BatchSizer(10, 5).next(3) == 3


def test_a_late_sender_collapses_missed_ticks_into_one():
    assert next_tick(0, 0.01, 0.05) == 1
    assert next_tick(3, 0.16, 0.05) == 4
    assert next_tick(3, 0.33, 0.05) == 6


def test_short_and_long_interval_forms_parse_the_same():
    base = ["-h", "127.0.0.1:1", "-m", "5"]
    assert parse_config([*base, "-i", "50_000_000"]) == parse_config([*base, "--interval=50000000"])
    assert parse_config([*base, "-i50000000"]).interval == 50_000_000
    # Dagon's options and the Pony runtime's are accepted and change nothing.
    extra = ["-p", "127.0.0.1:9", "--name=w", "--ponythreads", "4", "--ponynoblock"]
    assert parse_config([*base, *extra]) == parse_config(base)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-m", "1"], "Must supply required '--host' argument"),
        (["-h", "127.0.0.1", "-m", "1"], "'--host' argument should be in format: '127.0.0.1:8080"),
        (["-h", "a:1"], "Must supply required '--messages' argument"),
        (["-h", "a:1", "-m", "1", "-g", "4", "-z"], "--msg-size and --variable-size can't be"),
        (["-h", "a:1", "-m", "1", "-y", "-u"], "--binary requires either --msg-size or --var"),
        (["-h", "a:1", "-m", "1", "-f", "/no/such"], "Error opening file '/no/such'."),
    ],
)
def test_required_flag_messages(args, message, capsys):
    assert sender.main(args) == 1
    assert message in capsys.readouterr().err


def test_help_prints_usage_and_exits_0(capsys):
    assert sender.main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "--host" in out and "--vary-by" in out and "--partition" in out
    assert "-h is --host, as in giles sender, so the help is --help only." in out


@pytest.mark.parametrize("args", [["-h"], ["-h", "-m", "3"], ["-m", "3", "-h"]])
def test_a_bare_h_says_it_is_host_and_where_the_help_is(args, capsys):
    assert sender.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(
        "Error: -h is --host HOST:PORT, as in giles sender; sender --help prints the help\n"
    )


def test_help_wins_over_h_and_h_keeps_its_address(capsys):
    assert sender.main(["-h", "--help"]) == 0
    assert capsys.readouterr().out.startswith("Usage: sender")
    assert sender.parse_config(["-h", "127.0.0.1:7010", "-m", "3"]).port == "7010"


# ---------------------------------------------------------------- real processes


def test_100k_u64_messages_arrive_byte_exact_back_to_back(tmp_path):
    """Scenario 12, and the byte-exact check of the whole stream."""
    with RawListener() as listener:
        result, data = send(listener, "-m", "100_000", "-i", "0", *U64, "-w", cwd=tmp_path)
    assert data == u64_records(range(1, 100_001))
    # Not a terminal: no progress bar, only the summary line.
    summary = rb"sender: 100000 messages in [\d.]+ s \([\d,]+ msg/s\)\n"
    assert re.fullmatch(summary, result.stderr), explain(result)
    assert not (tmp_path / "sent.txt").exists()


def test_three_u64_records_and_sent_txt(tmp_path):
    """Scenario 1."""
    with RawListener() as listener:
        _, data = send(listener, "-m", "3", *U64, cwd=tmp_path)
    assert data == u64_records([1, 2, 3]) and len(data) == 36
    lines = re.findall(rb"(\d+), (.{12})\n", (tmp_path / "sent.txt").read_bytes(), re.DOTALL)
    assert [record for _, record in lines] == [u64_records([v]) for v in (1, 2, 3)]
    assert len({ts for ts, _ in lines}) == 1  # one batch, one timestamp
    assert abs(int(lines[0][0]) / 1e9 - time.time()) < 60


def test_start_from_shifts_the_counter(tmp_path):
    """Scenario 2."""
    with RawListener() as listener:
        _, data = send(listener, "-m", "2", *U64, "-v", "10000", cwd=tmp_path)
    assert data == u64_records([10001, 10002])


def test_u64_without_binary_is_double_framed_with_one_warning(tmp_path):
    """Scenario 3."""
    with RawListener() as listener:
        result, data = send(listener, "-m", "5", "-u", "-w", cwd=tmp_path)
    assert data == b"".join(struct.pack(">IIQ", 12, 8, v) for v in range(1, 6))
    assert result.stderr.count(b"Warning") == 1, explain(result)


def test_text_counter(tmp_path):
    """Scenario 4; sent.txt holds the decimal text."""
    with RawListener() as listener:
        _, data = send(listener, "-m", "3", cwd=tmp_path)
    assert data == b"\x00\x00\x00\x011\x00\x00\x00\x012\x00\x00\x00\x013"
    assert re.fullmatch(rb"(\d+, [123]\n){3}", (tmp_path / "sent.txt").read_bytes())


def test_text_file_with_and_without_repeat(tmp_path):
    """Scenario 5."""
    (tmp_path / "a.txt").write_bytes(b"one\ntwo\r\n\nthree\nfour\n")
    framed = [struct.pack(">I", len(w)) + w for w in (b"one", b"two", b"three", b"four")]
    with RawListener() as listener:
        _, data = send(listener, "-m", "10", "-f", "a.txt", "-w", cwd=tmp_path)
    assert data == b"".join(framed)
    with RawListener() as listener:
        _, data = send(listener, "-m", "10", "-f", "a.txt", "-r", "-w", cwd=tmp_path)
    assert data == b"".join((framed * 3)[:10])


def test_binary_files_fixed_and_variable_size(tmp_path):
    (tmp_path / "fixed").write_bytes(u64_records([1, 2]) + b"\x00\x00")
    (tmp_path / "var").write_bytes(b"\x00\x00\x00\x02hi\x00\x00\x00\x00\x00\x00\x00\x01!")
    with RawListener() as listener:
        result, data = send(listener, "-m", "9", "-f", "fixed", "-y", "-g", "12", cwd=tmp_path)
    assert data == u64_records([1, 2])
    assert b"trailing" in result.stderr, explain(result)
    with RawListener() as listener:
        _, data = send(listener, "-m", "9", "-f", "var", "-y", "-z", "-w", cwd=tmp_path)
    assert data == b"\x00\x00\x00\x02hi\x00\x00\x00\x01!"


def test_partition_is_appended_after_the_u64(tmp_path):
    with RawListener() as listener:
        _, data = send(listener, "-m", "2", *U64, "--partition", "k7", "-w", cwd=tmp_path)
    assert data == u64_records([1, 2], b"k7")


def test_zero_messages_connects_and_ends(tmp_path):
    with RawListener() as listener:
        _, data = send(listener, "-m", "0", *U64, "-w", cwd=tmp_path)
    assert data == b""


def test_ten_batches_fifty_ms_apart_each_in_one_write(tmp_path):
    """Scenario 6: 100 records per tick, one write each; about 450 ms first to last."""
    with RawListener() as listener:
        args = ["-m", "1000", "-s", "100", "-i", "50_000_000", *U64, "-w"]
        _, _ = send(listener, *args, cwd=tmp_path)
        received = listener.wait_closed()
    assert received.data == u64_records(range(1, 1001))
    ends = []
    for _, chunk in received.chunks:
        ends.append((ends[-1] if ends else 0) + len(chunk))
    assert all(end % 1200 == 0 for end in ends), ends  # no batch was split across writes
    times = [t for t, _ in received.chunks]
    assert 0.3 < times[-1] - times[0] < 3.0
    assert len(received.chunks) >= 5  # batches came separately, not in one burst
    assert not (tmp_path / "sent.txt").exists()


def test_seed_readme_command_takes_about_a_second(tmp_path):
    """The seed's 100 records at 10 per 100 ms, with Pony runtime flags."""
    with RawListener() as listener:
        started = time.monotonic()
        args = "--batch-size 10 --interval 100_000_000 --ponythreads=1 --binary --msg-size 12"
        _, data = send(listener, *args.split(), "--no-write", "--u64", "--messages", "100",
                       cwd=tmp_path)  # fmt: skip
        elapsed = time.monotonic() - started
    assert data == u64_records(range(1, 101))
    assert 0.7 < elapsed < 8.0  # about 1 s of pacing; 10x slower would be a unit mistake


def test_both_interval_spellings_pace_the_same(tmp_path):
    """Scenario 9: run both at once; each sends 3 batches of 100 over about 100 ms."""
    with RawListener() as one, RawListener() as two:
        common = ["-m", "300", "-s", "100", *U64, "-w"]
        tools = [
            Tool("sender", "-h", one.address, *common, "-i", "50_000_000", cwd=tmp_path),
            Tool("sender", "-h", two.address, *common, "--interval=50000000", cwd=tmp_path),
        ]
        for tool in tools:
            with tool:
                assert tool.wait() == 0, tool.report()
        for listener in (one, two):
            received = listener.wait_closed()
            assert received.data == u64_records(range(1, 301))
            span = received.chunks[-1][0] - received.chunks[0][0]
            assert 0.05 < span < 2.0


def test_unable_to_connect(tmp_path):
    """Scenario 10."""
    result = run_tool("sender", "-h", f"127.0.0.1:{closed_port()}", "-m", "3", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    assert result.stderr.strip() == b"Unable to connect", explain(result)


@pytest.mark.parametrize("port", ["\u00b2", "99999"])
def test_digits_that_are_no_port_cannot_connect(port, tmp_path):
    """giles only checks for one colon; '²' and 99999 must not crash or wrap to a port."""
    result = run_tool("sender", "-h", f"127.0.0.1:{port}", "-m", "3", "-w", cwd=tmp_path)
    assert result.returncode == 1, explain(result)
    assert result.stderr == b"Unable to connect\n", explain(result)


@pytest.mark.parametrize("pacing", [["-i", "0"], ["-s", "5000", "-i", "1_000_000"]])
def test_back_pressure_holds_the_sender_until_the_peer_reads(pacing, tmp_path):
    """Scenario 11: the peer reads nothing for 2 s; afterwards every record arrives once.

    Back-to-back, the sender waits for room; paced (5 M/s nominal), its ticks
    are skipped. Either way nothing is lost or sent twice.
    """
    hold = threading.Event()
    count = 1_000_000
    args = ["-m", str(count), *pacing, *U64, "-w"]
    with RawListener(rcvbuf=4096, hold=hold) as listener:
        with Tool("sender", "-h", listener.address, *args, cwd=tmp_path) as tool:
            tool.wait_stdout(lambda out: b"Connected" in out)
            time.sleep(2.0)  # the fault being injected: a peer that stops reading
            assert tool.proc.poll() is None, f"12 MB cannot fit in buffers\n{tool.report()}"
            hold.set()
            assert tool.wait() == 0, tool.report()
        received = listener.wait_closed()
    assert received.data == u64_records(range(1, count + 1))


def test_peer_closing_first_is_an_error_naming_the_count(tmp_path):
    with RawListener(close_after=1200) as listener:
        result = run_tool("sender", "-h", listener.address, "-m", "50_000_000", "-i", "0", *U64,
                          "-w", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, explain(result)
    match = re.fullmatch(rb"Error: connection lost after (\d+) records\n", result.stderr)
    assert match and 100 <= int(match.group(1)) < 50_000_000, explain(result)


def test_a_reset_while_records_wait_in_the_senders_buffer_is_an_error(tmp_path):
    """Every record goes in one write, twice what the kernel's buffers can hold (the
    peer's 4 KiB receive buffer, at most tcp_wmem's maximum to send), so half of it
    still waits in the sender when the peer resets; that is no clean ending."""
    send_max = int(Path("/proc/sys/net/ipv4/tcp_wmem").read_text().split()[2])
    count = 2 * (send_max + 2 * 4096) // 12
    with RawListener(rcvbuf=4096, reset=True) as listener:
        result = run_tool("sender", "-h", listener.address, "-m", str(count), "-s", str(count),
                          "-i", "0", *U64, "-w", cwd=tmp_path)  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert result.stdout == b"Connected\n", explain(result)
    assert result.stderr == f"Error: connection lost after {count} records\n".encode(), explain(
        result
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["-y", "-u", "-m", "5"], b"--binary requires either --msg-size or --variable-size"),
        (["-y", "-g", "-12", "-u", "-m", "5"], b"Error: option --msg-size"),
        (["--bogus", "-m", "5"], b"Error: unknown option --bogus"),
    ],
)
def test_bad_command_lines_send_nothing(args, needle, tmp_path):
    """Scenarios 7, 8 and 13."""
    with RawListener(accept=False) as listener:
        result = run_tool("sender", "-h", listener.address, *args, cwd=tmp_path)
        assert not listener.has_pending(), "the sender connected"
    assert result.returncode == 1, explain(result)
    assert needle in result.stderr and result.stdout == b"", explain(result)
    if needle.startswith(b"Error:"):
        assert b"Usage: sender" in result.stderr, explain(result)


def test_progress_bar_only_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    # A fresh pty is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
    try:
        with RawListener() as listener, Tool(
            "sender", "-h", listener.address, "-m", "2000", "-s", "100", "-i", "1_000_000",
            *U64, "-w", cwd=tmp_path, stderr=slave,
        ) as tool:  # fmt: skip
            os.close(slave)
            assert tool.wait() == 0
            seen = b""
            while b"messages in" not in seen:
                try:
                    seen += os.read(master, 1 << 16)
                except OSError:  # EIO: the child has gone and its terminal is closed
                    break
    finally:
        os.close(master)
    assert b"msg" in seen and b"|" in seen  # tqdm's bar, then the summary line
    assert tool.stdout == b"Connected\n"
