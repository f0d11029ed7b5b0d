"""The receiving end of exactly-once output: its holdings (pure), its ledger (FILE and marks on
disk, at each moment a crash can come), and data_receiver and receiver over loopback TCP."""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import struct

import pytest
from toolhelp import DEADLINE, Tool, closed_port, run_tool

from machida.errors import FrameError
from machida.wire import exactly_once as protocol
from machida.wire.exactly_once import OutputRun, SinkAcks, SinkMarks, Stream
from wallaroo_tools import ledger as ledger_module
from wallaroo_tools.layouts import records
from wallaroo_tools.ledger import Holdings, Ledger, LedgerError

S = Stream(0, 1, 0x1234)
T = Stream(0, 0, 0x5678)


def framed(*texts: str) -> list[bytes]:
    """Encoder output of sequence_window: each window behind its u32be length."""
    return [struct.pack(">I", len(t)) + t.encode() for t in texts]


def run(stream: Stream, first: int, n: int) -> OutputRun:
    return OutputRun(
        stream, first, framed(*(f"[{stream.key},{i}]" for i in range(first, first + n)))
    )


# -- holdings ---------------------------------------------------------------------------------


def test_a_stream_is_taken_once_in_order_and_acknowledged_once_durable():
    held = Holdings()
    assert held.answer([S]) == {}  # never seen
    assert held.fresh("a", run(S, 1, 3)) == run(S, 1, 3).values
    held.took(run(S, 1, 3))
    assert held.fresh("b", run(S, 2, 3)) == run(S, 4, 1).values  # 2 and 3 are held
    held.took(run(S, 2, 3))
    assert held.acks("a") == {}  # nothing is durable yet
    assert held.moved() == {S: 4}
    held.committed({S: 4})
    assert held.acks("a") == {S: 4} and held.acks("b") == {S: 4}
    assert held.acks("a") == {}  # once
    assert held.answer([S, T]) == {S: 4}


def test_a_record_past_the_next_one_of_a_known_stream_is_a_gap():
    held = Holdings({S: 4})
    with pytest.raises(FrameError, match=r"output 6 of stream .* arrived, but 5 was next"):
        held.fresh("a", run(S, 6, 1))
    assert held.taken == {S: 4}


def test_a_stream_never_seen_may_start_anywhere_with_a_warning():
    held = Holdings()
    assert held.fresh("a", run(T, 7, 2)) == run(T, 7, 2).values
    assert len(held.warnings) == 1 and "starts at output 7" in held.warnings[0]


def test_records_already_held_are_acknowledged_without_a_new_commit():
    held = Holdings({S: 4})
    assert held.fresh("a", run(S, 1, 4)) == []
    assert held.moved() == {}
    assert held.acks("a") == {S: 4}


# -- the ledger on disk -----------------------------------------------------------------------


def test_the_ledger_starts_empty_and_reopens_with_what_it_committed(tmp_path):
    path = str(tmp_path / "out.txt")
    ledger = Ledger(path)
    ledger.write(b"abc", 1)
    ledger.commit({S: 1})
    ledger.write(b"de", 1)
    ledger.commit({S: 2, T: 9})
    ledger.close()
    again = Ledger(path)
    assert (again.marks, again.length, again.frames) == ({S: 2, T: 9}, 5, 2)
    assert pathlib.Path(path).read_bytes() == b"abcde"
    again.close()


@pytest.mark.parametrize("moment", ["before the fsync of FILE", "before the journal record",
                                    "in the middle of the journal record"])  # fmt: skip
def test_a_crash_at_any_moment_of_a_commit_leaves_file_and_marks_agreeing(tmp_path, moment):
    """What a kill -9 can leave: FILE longer than the journal says, or a torn journal record;
    the ledger cuts both back to the last whole commit."""
    path = str(tmp_path / "out.txt")
    ledger = Ledger(path)
    ledger.write(b"abc", 1)
    ledger.commit({S: 1})
    ledger.close()
    with open(path, "ab") as file:
        file.write(b"more")  # a commit's FILE bytes, written (and maybe synced)
    if moment == "in the middle of the journal record":
        record = ledger_module.encode_record(7, 2, {S: 2})
        with open(path + ".marks", "ab") as journal:
            journal.write(record[: len(record) - 3])
    again = Ledger(path)
    assert (again.marks, again.length, again.frames) == ({S: 1}, 3, 1)
    assert pathlib.Path(path).read_bytes() == b"abc"
    again.write(b"de", 1)
    again.commit({S: 2})  # appended after the good data
    again.close()
    third = Ledger(path)
    assert (third.marks, third.length) == ({S: 2}, 5)
    third.close()


def test_a_file_shorter_than_its_marks_is_refused(tmp_path):
    path = str(tmp_path / "out.txt")
    ledger = Ledger(path)
    ledger.write(b"abc", 1)
    ledger.commit({S: 1})
    ledger.close()
    os.truncate(path, 1)
    with pytest.raises(LedgerError, match=r"holds 1 bytes, but its marks .* record 3"):
        Ledger(path)


def test_a_journal_past_its_limit_is_replaced_by_one_record_of_every_mark(tmp_path, monkeypatch):
    monkeypatch.setattr(ledger_module, "JOURNAL_LIMIT", 2048)
    path = str(tmp_path / "out.txt")
    ledger = Ledger(path)
    for i in range(1, 200):
        ledger.write(b"x", 1)
        ledger.commit({Stream(0, i % 7, 1): i})
    ledger.close()
    assert os.path.getsize(path + ".marks") < 2048
    again = Ledger(path)
    assert again.marks == {Stream(0, k, 1): max(i for i in range(1, 200) if i % 7 == k)
                           for k in range(7)}  # fmt: skip
    assert (again.length, again.frames) == (199, 199)
    again.close()


# -- data_receiver and receiver over loopback -------------------------------------------------


class Worker:
    """A worker's exactly-once sink connection, played by the test."""

    def __init__(self, address: str, streams: tuple[Stream, ...] = ()) -> None:
        host, port = address.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=DEADLINE)
        self.decoder = protocol.SinkDecoder()
        self.sock.sendall(protocol.hello("worker-2", list(streams)))
        (marks,) = self.events(1)
        assert isinstance(marks, SinkMarks)
        self.marks = marks.marks

    def events(self, n: int) -> list:
        got: list = []
        while len(got) < n:
            data = self.sock.recv(1 << 16)
            assert data, "the receiver closed the connection"
            got += self.decoder.feed(data)
        return got

    def send(self, *runs: OutputRun) -> dict[Stream, int]:
        """Output; the acknowledgement that comes back."""
        for frame in protocol.outputs(list(runs)):
            self.sock.sendall(frame)
        acked: dict[Stream, int] = {}
        want = {r.stream: r.first + len(r.values) - 1 for r in runs}
        while any(acked.get(s, 0) < mark for s, mark in want.items()):
            (ack,) = self.events(1)
            assert isinstance(ack, SinkAcks)
            acked.update(ack.marks)
        return acked

    def closed(self) -> bool:
        self.sock.settimeout(DEADLINE)
        try:
            return self.sock.recv(1 << 16) == b""
        except ConnectionResetError:
            return True

    def close(self) -> None:
        self.sock.close()


def receiver_args(tmp_path, address: str) -> list[str]:
    return ["--listen", address, "--framed", "--exactly-once", "--output",
            str(tmp_path / "out.txt")]  # fmt: skip


def start(tmp_path, address: str) -> Tool:
    tool = Tool("data_receiver", *receiver_args(tmp_path, address), cwd=tmp_path)
    tool.wait_stdout(lambda out: b"Listening on" in out)
    return tool


def held(tmp_path, name: str = "out.txt") -> list[bytes]:
    return [payload for _, payload in records((tmp_path / name).read_bytes(), "giles")]


def test_data_receiver_takes_each_output_once_and_survives_a_kill_9(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    with start(tmp_path, address) as receiver:
        worker = Worker(address)
        assert worker.marks == {}
        assert worker.send(run(S, 1, 3), run(T, 1, 1)) == {S: 3, T: 1}
        assert worker.send(run(S, 2, 4)) == {S: 5}  # a resend: 2 and 3 are skipped
        receiver.wait_stdout(lambda out: out.count(b"\n") == 7)
        assert receiver.stdout.splitlines()[1:] == [b"[1,1]", b"[1,2]", b"[1,3]", b"[0,1]",
                                                    b"[1,4]", b"[1,5]"]  # fmt: skip
        assert receiver.stop(signal.SIGKILL) == -9
    worker.close()
    assert held(tmp_path) == [b"[1,1]", b"[1,2]", b"[1,3]", b"[0,1]", b"[1,4]", b"[1,5]"]
    with start(tmp_path, address) as receiver:  # the same command
        again = Worker(address, (S, T, Stream(0, 2, 1)))
        assert again.marks == {S: 5, T: 1}  # what it holds, of the streams asked about
        assert again.send(run(S, 1, 6)) == {S: 6}
        assert receiver.stop() == 0
    assert held(tmp_path)[-1] == b"[1,6]" and len(held(tmp_path)) == 7
    verdict = run_tool("validator", "--format", "giles", "-i", str(tmp_path / "out.txt"), "-e", "1")
    assert b"Could not parse" not in verdict.stderr  # the file is in the giles layout


def test_a_gap_closes_only_that_connection_with_one_line(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    with start(tmp_path, address) as receiver:
        first, other = Worker(address), Worker(address)
        first.send(run(S, 1, 2))
        for frame in protocol.outputs([run(S, 5, 1)]):
            first.sock.sendall(frame)
        assert first.closed()
        line = receiver.wait_stderr(lambda err: b"\n" in err).decode().strip()
        assert line.startswith("ERROR: 127.0.0.1:") and line.endswith(
            "(worker-2): output 5 of stream 0/1/0000000000001234 arrived, but 3 was next: "
            "output would be missing; connection closed"
        )
        assert other.send(run(S, 3, 1)) == {S: 3}  # the other connection goes on
        assert receiver.stop() == 0
    assert "Traceback" not in receiver.stderr.decode()
    assert held(tmp_path) == [b"[1,1]", b"[1,2]", b"[1,3]"]


def test_a_worker_without_exactly_once_is_refused_with_a_hint(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    with start(tmp_path, address) as receiver:
        host, port = address.rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=DEADLINE) as sock:
            sock.sendall(b"".join(framed("[0,0,0,1]")))
            assert sock.recv(100) == b""
        err = receiver.wait_stderr(lambda e: b"\n" in e).decode()
        assert "(is the worker started with --exactly-once?); connection closed" in err
        assert receiver.stop() == 0


@pytest.mark.parametrize("args", [["--exactly-once"], ["--framed", "--exactly-once"],
                                  ["--exactly-once", "--output", "x"]])  # fmt: skip
def test_data_receiver_exactly_once_needs_framed_and_output(args):
    result = run_tool("data_receiver", "--listen", "127.0.0.1:0", *args)
    assert result.returncode == 1
    assert result.stderr.startswith(
        b"Error: option --exactly-once needs --framed and --output FILE\n"
    )


def test_the_giles_receiver_takes_each_output_once_and_counts_what_the_file_holds(tmp_path):
    address = f"127.0.0.1:{closed_port()}"
    command = ("receiver", "--listen", address, "--exactly-once", "--expect", "5")
    with Tool(*command, cwd=tmp_path) as receiver:
        receiver.wait_stdout(lambda out: b"Listening for data" in out)
        Worker(address).send(run(S, 1, 3))
        assert receiver.stop(signal.SIGKILL) == -9
    with Tool(*command, cwd=tmp_path) as receiver:
        receiver.wait_stdout(lambda out: b"Listening for data" in out)
        worker = Worker(address, (S,))
        assert worker.marks == {S: 3}
        worker.send(run(S, 1, 5))
        assert receiver.wait() == 0
        assert b"5 expected messages received. Terminating..." in receiver.stdout
    assert held(tmp_path, "received.txt") == [f"[1,{i}]".encode() for i in range(1, 6)]
    with Tool(*command, cwd=tmp_path) as receiver:  # it holds 5 already: it ends at once
        assert receiver.wait() == 0
        assert b"5 expected messages received. Terminating..." in receiver.stdout
    refused = run_tool("receiver", "--listen", address, "--exactly-once", "--no-write")
    assert refused.returncode == 1 and b"leave out --no-write" in refused.stderr
