"""The event log file (machida/durability/eventlog.py): commits, replay, a crash mid-commit."""

from __future__ import annotations

import os
import tracemalloc

import pytest

from machida.durability.eventlog import (
    EventLog,
    EventLogError,
    encode_commit,
    header,
    read_log,
    recover_log,
)
from machida.wire.exactly_once import OutputRun, Stream, outputs

IDENTITY = ("app", "worker-2", "0123456789abcdef")
FIRST = encode_commit([("window", 0, b"first")], {"initializer": (1, 10)})
SECOND = encode_commit([("window", 1, b"second")], {"initializer": (1, 20)})
THIRD = encode_commit([("window", 2, b"third")], {"other": (2, 30)})


def new_log(tmp_path, *commits: bytes) -> str:
    path = str(tmp_path / "app-worker-2.evlog")
    log = EventLog(path, *IDENTITY)
    for commit in commits:
        log.append(commit)
    log.sync()
    log.close()
    return path


def test_commits_round_trip_with_newest_snapshot_and_origin_winning(tmp_path):
    newer = encode_commit([("window", 0, b"newer"), ("other", 7, b"")], {"initializer": (2, 3)})
    path = new_log(tmp_path, FIRST, SECOND, newer)
    replay = read_log(path, *IDENTITY)
    assert replay.snapshots == {
        ("window", 0): b"newer",
        ("window", 1): b"second",
        ("other", 7): b"",
    }
    assert replay.origins == {"initializer": (2, 3)}
    assert replay.entries == 7
    assert replay.end == len(header(*IDENTITY)) + len(FIRST) + len(SECOND) + len(newer)


def test_a_link_logged_as_wholly_acknowledged_numbers_on_after_its_mark(tmp_path):
    """What a rotated log holds of a link with nothing in flight: only its mark."""
    path = new_log(tmp_path, encode_commit(incarnation=3, acked={"worker-2": 10}))
    link = read_log(path, *IDENTITY).links["worker-2"]
    assert (link.acked, link.next_seq, link.batches) == (10, 11, [])


def test_a_header_of_another_worker_is_an_error(tmp_path):
    path = new_log(tmp_path, FIRST)
    with pytest.raises(EventLogError, match="does not match this worker"):
        read_log(path, "app", "worker-3", IDENTITY[2])


def crash_then_recover_then_append(path: str) -> None:
    """Recover as Resilience.open does, then log THIRD through a reopened EventLog."""
    replay = recover_log(path, *IDENTITY)
    assert replay.snapshots == {("window", 0): b"first"}
    log = EventLog(path, *IDENTITY)
    assert log.size == replay.end == len(header(*IDENTITY)) + len(FIRST)
    log.append(THIRD)
    log.sync()
    log.close()


@pytest.mark.parametrize("cut", [3, len(SECOND) // 2, len(SECOND) - 1])
def test_commits_after_a_torn_commit_survive_the_next_recovery(tmp_path, cut):
    path = new_log(tmp_path, FIRST)
    with open(path, "ab") as file:
        file.write(SECOND[:cut])  # the crash came in the middle of this write
    crash_then_recover_then_append(path)
    replay = read_log(path, *IDENTITY)
    assert replay.snapshots == {("window", 0): b"first", ("window", 2): b"third"}
    assert replay.origins == {"initializer": (1, 10), "other": (2, 30)}


def test_a_final_commit_failing_its_crc_is_cut_off_too(tmp_path):
    path = new_log(tmp_path, FIRST)
    corrupt = bytearray(SECOND)
    corrupt[-1] ^= 0xFF
    with open(path, "ab") as file:
        file.write(corrupt)
    crash_then_recover_then_append(path)
    replay = read_log(path, *IDENTITY)
    assert replay.snapshots == {("window", 0): b"first", ("window", 2): b"third"}
    assert replay.origins == {"initializer": (1, 10), "other": (2, 30)}


def test_recovering_an_intact_log_leaves_it_alone(tmp_path):
    path = new_log(tmp_path, FIRST, SECOND)
    with open(path, "rb") as file:
        before = file.read()
    assert recover_log(path, *IDENTITY).entries == 4
    with open(path, "rb") as file:
        assert file.read() == before


def test_a_new_log_makes_its_name_durable_too(tmp_path, monkeypatch):
    synced = []
    monkeypatch.setattr("machida.durability.eventlog.fsync_directory", synced.append)
    path = new_log(tmp_path, FIRST)
    assert synced == [str(tmp_path)]
    EventLog(path, *IDENTITY).close()  # an existing log is only appended to
    assert synced == [str(tmp_path)]


# -- exactly-once output in the log, and a log read one commit at a time ----------------------


def stream(key: int) -> Stream:
    return Stream(0, key, 0xABC)


def test_output_is_kept_until_its_receiver_acknowledges_it_and_counters_take_the_newest(
    tmp_path,
):
    one, two = (
        outputs([OutputRun(stream(0), 1, [b"a", b"b"]), OutputRun(stream(1), 1, [b"c"])])[0],
        outputs([OutputRun(stream(0), 3, [b"d"])])[0],
    )
    path = new_log(
        tmp_path,
        encode_commit(outputs=[(0, one)], counters={(0, 0): (0xABC, 2), (0, 1): (0xABC, 1)}),
        encode_commit(outputs=[(0, two)], counters={(0, 0): (0xABC, 3)}),
        encode_commit(sink_acked={stream(0): 2}),
    )
    replay = read_log(path, *IDENTITY)
    assert replay.counters == {(0, 0): (0xABC, 3), (0, 1): (0xABC, 1)}
    assert replay.sinks[0].runs() == [
        OutputRun(stream(1), 1, [b"c"]),
        OutputRun(stream(0), 3, [b"d"]),
    ]
    more = encode_commit(sink_acked={stream(1): 1, stream(0): 3})
    path = new_log(tmp_path, more)  # appended to the same file
    sink = read_log(path, *IDENTITY).sinks[0]
    assert sink.runs() == [] and not sink.frames  # wholly acknowledged frames are let go


def test_a_logged_output_frame_that_does_not_decode_is_a_corrupt_entry(tmp_path):
    path = new_log(tmp_path, encode_commit(outputs=[(0, b"\x00\x00\x00\x01Z")]))
    with pytest.raises(EventLogError, match="corrupt entry"):
        read_log(path, *IDENTITY)


def test_a_long_log_is_read_in_the_memory_of_one_commit(tmp_path):
    """20 MB of commits (each a 64 KiB snapshot of the same key) read with a peak far below."""
    state = bytes(range(256)) * 256
    log = EventLog(str(tmp_path / "app-worker-2.evlog"), *IDENTITY)
    commit = encode_commit([("window", 0, state)], {"initializer": (1, 10)})
    for _ in range(320):
        log.append(commit)
    log.sync()
    log.close()
    assert os.path.getsize(log.path) > 20_000_000
    tracemalloc.start()
    try:
        replay = read_log(log.path, *IDENTITY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert replay.snapshots == {("window", 0): state} and replay.entries == 640
    assert peak < 1_000_000, peak


def test_a_torn_commit_whose_length_runs_past_the_file_is_not_read(tmp_path):
    path = new_log(tmp_path, FIRST)
    with open(path, "ab") as file:
        file.write(b"\x7f\xff\xff\xf0\x00\x00\x00\x00" + b"x" * 100)  # a length of ~2 GiB
    tracemalloc.start()
    try:
        replay = read_log(path, *IDENTITY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert replay.end == len(header(*IDENTITY)) + len(FIRST)
    assert peak < 1_000_000  # the bogus length was never asked for
