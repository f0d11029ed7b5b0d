"""machida-flink's pure parts: the ingress's entries and requests, message batches, the plan's
translation into a job's shape, and the command line. No JVM, no sockets."""

from __future__ import annotations

import contextlib
import pickle

import pytest
from hypothesis import given
from hypothesis import strategies as st

from machida.app.loader import ints_round_trip, load_plan
from machida.errors import ApplicationError, FrameError
from machida_flink import batch
from machida_flink import ingress_log as log
from machida_flink.options import ConfigError, help_text, parse
from machida_flink.translate import shape

payloads = st.lists(st.binary(max_size=40), max_size=20)


# -- entries ---------------------------------------------------------------------------------


def test_an_entry_has_the_documented_bytes():
    assert log.entry(log.CLOSED, 7) == bytes.fromhex("00000005 03 00000007")
    assert log.frames_entry(1, [b"ab", b""]) == bytes.fromhex(
        "0000000f 02 00000001 00000002 6162 00000000"
    )


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), payloads), max_size=10))
def test_records_of_entries_split_back_whole(entries):
    record = b"".join(log.frames_entry(conn, frames) for conn, frames in entries)
    split = log.split_entries(record)
    assert [(kind, conn) for kind, conn, _ in split] == [(log.FRAMES, c) for c, _ in entries]
    assert [log.split_frames(body) for _, _, body in split] == [f for _, f in entries]


@given(payloads, st.data())
def test_a_record_cut_inside_an_entry_is_a_frame_error(frames, data):
    first = log.frames_entry(3, frames)
    record = first + log.entry(log.END, 0)
    cut = data.draw(st.integers(1, len(record) - 1).filter(lambda c: c != len(first)))
    with pytest.raises(FrameError):
        log.split_entries(record[:cut])


def test_an_unknown_entry_kind_is_a_frame_error():
    with pytest.raises(FrameError, match="kind=9"):
        log.split_entries(log.entry(9, 0))


TOKEN = bytes(range(log.TOKEN_SIZE))


def subscribe(stream: int, offset: int, token: bytes = TOKEN) -> bytes:
    return log.SUBSCRIBE_REQUEST.pack(log.SUBSCRIBE, stream, offset, token)


def commit(offset: int) -> bytes:
    return log.COMMIT_REQUEST.pack(log.COMMIT, offset)


def test_a_subscription_has_the_documented_bytes():
    assert subscribe(2, 5) == bytes.fromhex("01 00000002 0000000000000005") + TOKEN
    assert commit(7) == bytes.fromhex("02 0000000000000007")


requests = st.lists(st.one_of(
    st.tuples(st.just(log.SUBSCRIBE), st.integers(0, 2**32 - 1), st.integers(0, 2**64 - 1),
              st.binary(min_size=log.TOKEN_SIZE, max_size=log.TOKEN_SIZE)),
    st.tuples(st.just(log.COMMIT), st.none(), st.integers(0, 2**64 - 1), st.just(b"")),
), max_size=8)  # fmt: skip


def encode_requests(requests: list) -> bytes:
    return b"".join(
        subscribe(s, o, t) if k == log.SUBSCRIBE else commit(o) for k, s, o, t in requests
    )


def split_at(data: bytes, cuts: list[int]) -> list[bytes]:
    cuts = sorted(cuts)
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)])]


@given(requests, st.data())
def test_requests_decode_whatever_the_reads(requests, data):
    stream = encode_requests(requests)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=5))
    decoder = log.RequestDecoder()
    got = []
    for part in split_at(stream, cuts):
        got += decoder.feed(part)
    assert got == requests and decoder.error is None


@given(requests)
def test_requests_decode_byte_by_byte(requests):
    stream = encode_requests(requests)
    decoder = log.RequestDecoder()
    got = []
    for i in range(len(stream)):
        got += decoder.feed(stream[i : i + 1])
    assert got == requests and decoder.error is None


def test_an_unknown_request_stops_the_decoder():
    decoder = log.RequestDecoder()
    assert decoder.feed(commit(5) + b"\x07" + commit(6)) == [(log.COMMIT, None, 5, b"")]
    assert "unknown ingress request kind 7" in str(decoder.error)
    assert decoder.feed(commit(8)) == []


@given(st.lists(st.binary(max_size=60), max_size=8))
def test_random_reads_never_crash_the_request_decoder(reads):
    decoder = log.RequestDecoder()
    for data in reads:
        for kind, stream, offset, token in decoder.feed(data):
            assert kind in (log.SUBSCRIBE, log.COMMIT) and 0 <= offset < 2**64
            assert (stream is None) == (kind == log.COMMIT)
            assert len(token) == (log.TOKEN_SIZE if kind == log.SUBSCRIBE else 0)


@given(st.binary(max_size=200))
def test_random_bytes_are_entries_or_a_frame_error(data):
    try:
        entries = log.split_entries(data)
    except FrameError:
        return
    assert sum(log.ENTRY.size + len(body) for _, _, body in entries) == len(data)
    assert all(kind in log.KINDS for kind, _, _ in entries)


@given(st.binary(max_size=200))
def test_random_bytes_are_frames_or_a_frame_error(data):
    try:
        frames = log.split_frames(memoryview(data))
    except FrameError:
        return
    assert sum(4 + len(f) for f in frames) == len(data)


@pytest.mark.parametrize("body", [b"\x00", b"\x00\x00\x00", b"\x00\x00\x00\x01a\x00\x00"])
def test_a_frames_body_cut_inside_a_length_is_a_frame_error(body):
    with pytest.raises(FrameError, match="inside a frame's length"):
        log.split_frames(memoryview(body))


@given(st.lists(st.tuples(st.integers(0, 2**32 - 1), payloads), max_size=6), st.data())
def test_records_cut_between_entries_split_the_same(entries, data):
    whole = [log.frames_entry(conn, frames) for conn, frames in entries]
    cuts = data.draw(st.lists(st.integers(0, len(whole)), max_size=4))
    pieces = [b"".join(part) for part in split_list(whole, cuts)]

    def plain(record: bytes) -> list:
        return [(k, c, bytes(b)) for k, c, b in log.split_entries(record)]

    assert [e for piece in pieces for e in plain(piece)] == plain(b"".join(whole))


def split_list(items: list, cuts: list[int]) -> list[list]:
    cuts = sorted(cuts)
    return [items[a:b] for a, b in zip([0, *cuts], [*cuts, len(items)])]


# -- a reader's commits ------------------------------------------------------------------------


def test_commits_move_forward_within_what_was_sent():
    subscription = log.Subscription(0, 100)
    subscription.sent = 500
    assert subscription.commit(log.COMMIT, 100) is None
    assert subscription.commit(log.COMMIT, 300) is None
    assert subscription.commit(log.COMMIT, 300) is None
    assert subscription.commit(log.COMMIT, 299) == "commit 299 goes back from 300"
    assert subscription.commit(log.COMMIT, 501) == "commit 501 is beyond the 500 bytes sent"
    assert subscription.commit(log.SUBSCRIBE, 400) == "a second subscription on one connection"
    assert subscription.committed == 300


# -- message batches ---------------------------------------------------------------------------


def hop_out(message):
    return pickle.dumps(message)


def hop_in(data):
    return True, pickle.loads(data)


@given(st.lists(st.integers(0, 2**64 - 1), max_size=50))
def test_u64_batches_travel_raw(values):
    data = batch.encode(values, hop_out, raw_ints=True)
    assert data[:1] == b"Q" and len(data) == 1 + 8 * len(values)
    assert batch.decode(data, hop_in) == values


@given(st.lists(st.one_of(st.integers(), st.text(), st.none(), st.booleans()), max_size=30))
def test_other_batches_go_through_the_modules_pair(messages):
    data = batch.encode(messages, hop_out, raw_ints=True)
    back = batch.decode(data, hop_in)
    assert back == messages
    assert [type(m) for m in back] == [type(m) for m in messages]


def test_without_the_probe_ints_are_serialized_and_refused_messages_left_out():
    data = batch.encode([1, 2, 3], lambda m: None if m == 2 else hop_out(m), raw_ints=False)
    assert data[:1] == b"S" and batch.decode(data, hop_in) == [1, 3]


def test_the_int_probe_the_stages_share_with_the_runner_rejects_a_pair_that_changes_ints():
    assert ints_round_trip((pickle.dumps, pickle.loads))
    assert not ints_round_trip((lambda v: str(v).encode(), lambda b: b.decode()))
    assert not ints_round_trip((lambda v: 1 / 0, pickle.loads))


@pytest.mark.parametrize("data", [b"", b"Qabc", b"X", b"S\x00\x00\x00\x09ab", b"S\x00"])
def test_a_broken_batch_is_a_frame_error(data):
    with pytest.raises(FrameError):
        batch.decode(data, hop_in)


@given(st.binary(max_size=120))
def test_random_bytes_are_a_batch_or_a_frame_error(data):
    with contextlib.suppress(FrameError):
        batch.decode(data, lambda b: (True, bytes(b)))


# -- translation -------------------------------------------------------------------------------

SHARED = """
import wallaroo

class D(object):
    def header_length(self): return 4
    def payload_length(self, b): return 1
    def decode(self, b): return b
class S(object):
    def compute(self, d, s): return (d, True)
class B(object):
    def build(self): return 0
class P(object):
    def partition(self, d): return 0
class E(object):
    def encode(self, d): return b"x"
class C(object):
    def compute(self, d): return d

def application_setup(args):
    ab = wallaroo.ApplicationBuilder("app")
    ab.new_pipeline("one", wallaroo.TCPSourceConfig("h", "1", D()))
    ab.to(C).to_state_partition(S(), B(), "{a}", P(), [0, 1]).to_stateful(S(), B(), "{b}")
    ab.to_sink(wallaroo.TCPSinkConfig("h", "9", E()))
    ab.new_pipeline("two", wallaroo.TCPSourceConfig("h", "2", D()))
    ab.to_stateful(S(), B(), "{c}").to_state_partition(S(), B(), "{d}", P(), [0, 1])
    ab.done()
    ab.new_pipeline("three", wallaroo.TCPSourceConfig("h", "3", D())).to(C)
    ab.to_sink(wallaroo.TCPSinkConfig("h", "8", E()))
    return ab.build()
"""


def test_states_that_feed_each_other_are_refused(make_app):
    app = make_app(SHARED.format(a="A", b="B", c="B", d="A"))
    _, plan = load_plan(app, ["x"])
    with pytest.raises(ApplicationError, match="states 'A' -> 'B' -> 'A' feed each other"):
        shape(plan)


def test_a_shape_routes_every_state_step_and_sink(make_app):
    app = make_app(SHARED.format(a="A", b="B", c="C", d="A"))
    _, plan = load_plan(app, ["x"])
    found = shape(plan)
    assert found.routes == ((0, 1, "A"), (0, 2, "B"), (1, 0, "C"), (1, 1, "A"))
    assert found.order.index("C") < found.order.index("A") < found.order.index("B")
    assert found.feeds == {"A": ("C",), "B": ("A",), "C": ()}
    assert found.first == ("A", "C", None)
    assert found.sinks == {0: 0, 2: 1} and found.sink_addresses == ("h:9", "h:8")


# -- command line ------------------------------------------------------------------------------


def test_flags_and_the_applications_own_arguments(tmp_path):
    config = parse([
        "machida-flink", "--application-module", "sequence_window", "--in", "127.0.0.1:7010",
        "--parallelism", "2", "--out", "127.0.0.1:7002", "--ponythreads=1",
        "--checkpoint-interval", "500", "--state-backend", "rocksdb", "--worker-count", "2",
        "--cluster-initializer", "--jobmanager", "127.0.0.1:8081", "--resilience-dir",
        str(tmp_path), "--my-app-flag", "--log-rotation",
    ])  # fmt: skip
    assert config.app_args == ("machida-flink", "--in", "127.0.0.1:7010", "--out",
                               "127.0.0.1:7002", "--my-app-flag")  # fmt: skip
    assert (config.parallelism, config.checkpoint_interval_ms) == (2, 500)
    assert config.state_backend == "rocksdb" and config.jobmanager == ("127.0.0.1", 8081)
    assert config.notices == (
        "WARNING: --log-rotation ignored on Flink: "
        "state lives in Flink checkpoints, not event logs.",
    )


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ([], "You must provide machida-flink with --application-module"),
        (["--application-module", "m", "--state-backend", "x"], "--state-backend must be"),
        (["--application-module", "m", "--jobmanager", "nowhere"], "--jobmanager expects"),
        (["--application-module", "m", "--resilience-dir", "/no/such/dir"], "doesn't exist"),
        (["--application-module", "m", "--join", "h:1"], "--join (autoscale) is not supported"),
        (["--application-module", "m", "--name", "a/b"], "must not contain '/'"),
    ],
)
def test_bad_flags_are_one_line(words, message):
    with pytest.raises(ConfigError) as caught:
        parse(["machida-flink", *words])
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_help_lists_the_flink_flags():
    text = help_text()
    for flag in ("--parallelism", "--checkpoint-interval", "--state-backend", "--jobmanager"):
        assert flag in text
