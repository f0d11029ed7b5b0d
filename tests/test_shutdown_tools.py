"""cluster_shutdown, external_sender, and the external-channel codec they share.

The codec is tested as bytes in, messages out (whole, byte by byte, with
trailing bytes, and under hypothesis); the two tools run as real processes
against a :class:`RawListener` (tools.md §3-4, scenarios 23-26).
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from toolhelp import RawListener, closed_port, explain, run_tool

from machida.wire import external
from machida.wire.external import ExternalFrameDecoder, encode

# ---------------------------------------------------------------- codec


def test_encode_matches_the_spec_examples():
    assert encode(external.CLEAN_SHUTDOWN) == bytes.fromhex("00000002000D")
    assert encode(external.ROTATE_LOG, "worker1") == bytes.fromhex("00000009000C") + b"worker1"
    assert encode(external.PRINT, "hello") == bytes.fromhex("00000007000B") + b"hello"
    assert encode(external.PRINT, "é") == bytes.fromhex("00000004000B") + "é".encode()


def test_encode_refuses_what_no_worker_accepts():
    with pytest.raises(ValueError):
        encode(external.PRINT, b"x" * external.MAX_LENGTH)
    with pytest.raises(ValueError):
        encode(70000)


def test_decoder_whole_byte_by_byte_and_with_trailing_bytes():
    stream = encode(11, "hi") + encode(13) + encode(12, "worker-2")
    expected = [(11, "hi"), (13, ""), (12, "worker-2")]
    assert ExternalFrameDecoder().feed(stream) == expected
    decoder = ExternalFrameDecoder()
    assert [m for b in stream for m in decoder.feed(bytes([b]))] == expected
    decoder = ExternalFrameDecoder()
    assert decoder.feed(stream + encode(11, "next")[:5]) == expected
    assert decoder.pending == 5 and decoder.error is None


@pytest.mark.parametrize("length", [0, 1, external.MAX_LENGTH + 1])
def test_bad_length_stops_the_stream_after_the_good_messages(length):
    decoder = ExternalFrameDecoder()
    bad = length.to_bytes(4, "big") + b"\x00\x0b" + b"rest"
    assert decoder.feed(encode(11, "ok") + bad) == [(11, "ok")]
    assert decoder.error is not None and decoder.error.length == length
    assert decoder.feed(encode(11, "later")) == []


def test_invalid_utf8_is_replaced_not_fatal():
    assert ExternalFrameDecoder().feed(encode(11, b"a\xffb")) == [(11, "a\ufffdb")]


messages = st.lists(st.tuples(st.integers(0, 0xFFFF), st.text(max_size=30)), max_size=12)


@settings(max_examples=100, deadline=None)
@given(msgs=messages, cuts=st.lists(st.integers(0, 400), max_size=10))
def test_any_split_of_a_valid_stream_decodes_the_same(msgs, cuts):
    stream = b"".join(encode(i, t) for i, t in msgs)
    points = sorted({min(c, len(stream)) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)])]
    decoder = ExternalFrameDecoder()
    assert [m for piece in pieces for m in decoder.feed(piece)] == msgs
    assert decoder.pending == 0 and decoder.error is None


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), cut=st.integers(1, 64))
def test_random_bytes_never_crash_and_keep_every_message_before_the_first_bad_one(data, cut):
    decoder = ExternalFrameDecoder()
    got = [m for i in range(0, len(data), cut) for m in decoder.feed(data[i : i + cut])]
    whole = ExternalFrameDecoder().feed(data)
    assert got == whole
    assert all(isinstance(i, int) and isinstance(t, str) for i, t in got)
    assert decoder.pending <= len(data)


# ---------------------------------------------------------------- cluster_shutdown


CLEAN_SHUTDOWN = bytes.fromhex("00000002000D")


def test_cluster_shutdown_sends_the_six_bytes_and_ends_once_the_worker_answers():
    """Scenario 23; the worker's answer (the same frame) is our addition."""
    with RawListener(answer=CLEAN_SHUTDOWN) as listener:
        result = run_tool("cluster_shutdown", "--ponythreads=1", listener.address)
        received = listener.wait_closed()
    assert result.returncode == 0, explain(result)
    assert result.stderr == b""
    assert received.data == CLEAN_SHUTDOWN


@pytest.mark.parametrize(
    "peer",
    [{"close_after": 6}, {"answer": b"HTTP/1.1 400 Bad Request\r\n\r\n", "close_after": 6}],
    ids=["closes without a word", "answers something else"],
)
def test_cluster_shutdown_to_something_that_is_not_a_worker_is_an_error(peer):
    with RawListener(**peer) as listener:
        result = run_tool("cluster_shutdown", listener.address)
    assert result.returncode == 1, explain(result)
    assert result.stderr.decode() == (
        f"Error: {listener.address} did not acknowledge the CleanShutdown "
        f"(is it a worker's --external address?)\n"
    )


@pytest.mark.parametrize(
    "args",
    [[], ["127.0.0.1"], ["nohost:port"], ["a:1:2"], ["h:+80"], ["h:\u0663"], ["h:\u00b2"]],
)
def test_cluster_shutdown_usage(args):
    """Scenario 24, no or malformed address."""
    result = run_tool("cluster_shutdown", *args)
    assert result.returncode == 1, explain(result)
    assert result.stderr == b"Usage: cluster_shutdown HOST:PORT\n"


def test_cluster_shutdown_unreachable():
    """Scenario 24, nobody listening."""
    address = f"127.0.0.1:{closed_port()}"
    result = run_tool("cluster_shutdown", address)
    assert result.returncode == 1, explain(result)
    assert result.stderr == f"Error: Unable to connect to {address}\n".encode()


# ---------------------------------------------------------------- external_sender


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["-t", "rotate-log", "-m", "worker1"], bytes.fromhex("00000009000C") + b"worker1"),
        (["-m", "hello"], bytes.fromhex("00000007000B") + b"hello"),
        (["--type=clean-shutdown"], bytes.fromhex("00000002000D")),
        (["-tPRINT"], bytes.fromhex("00000002000B")),
        (["-t", "rescale", "-m", "3"], bytes.fromhex("000000030028") + b"3"),
        (["-t", "savepoint"], bytes.fromhex("000000020029")),
    ],
)
def test_external_sender_frames(args, expected):
    """Scenarios 25 and 26."""
    with RawListener() as listener:
        result = run_tool("external_sender", "-e", listener.address, *args)
        received = listener.wait_closed()
    assert result.returncode == 0, explain(result)
    assert received.data == expected


def test_external_sender_unknown_type_sends_nothing():
    with RawListener(accept=False) as listener:
        result = run_tool("external_sender", "-e", listener.address, "-t", "query")
        assert not listener.has_pending()
    assert result.returncode == 1, explain(result)
    first = result.stderr.splitlines()[0]
    assert first == (
        b"Error: unknown --type 'query' (use print, rotate-log, clean-shutdown, "
        b"shrink, partition-query, partition-count-query, cluster-status-query, rescale, "
        b"savepoint)"
    )


def test_external_sender_unreachable():
    address = f"127.0.0.1:{closed_port()}"
    result = run_tool("external_sender", "-e", address, "-m", "x")
    assert result.returncode == 1, explain(result)
    assert result.stderr == f"Error: Unable to connect to {address}\n".encode()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--bogus"], b"Error: unknown option --bogus"),
        (["-m", "x"], b"Error: Must supply required '--external' argument"),
        (["-e"], b"Error: option --external needs a value"),
    ],
)
def test_external_sender_bad_command_lines(args, needle):
    result = run_tool("external_sender", *args)
    assert result.returncode == 1, explain(result)
    assert result.stderr.startswith(needle + b"\nUsage: external_sender"), explain(result)


def test_external_sender_help():
    result = run_tool("external_sender", "--help")
    assert result.returncode == 0 and b"--external" in result.stdout


# ---------------------------------------------------------------- cluster_shrinker


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        ([], b"Error: You must specify exactly one of --query, --count, or --workers"),
        (["--query", "--workers", "w2"], b"Error: You must specify exactly one of"),
        (["--count", "0"], b"Error: option --count must be at least 1, got '0'"),
        (["--query", "-e", "nohost"], b"Error: '--external' argument should be in format"),
    ],
)
def test_cluster_shrinker_bad_command_lines(args, needle):
    result = run_tool("cluster_shrinker", "-e", "127.0.0.1:1", *args)
    assert result.returncode == 1, explain(result)
    assert result.stderr.startswith(needle), explain(result)
    assert b"Usage: cluster_shrinker" in result.stderr


def test_cluster_shrinker_unreachable_and_the_shrink_frame_it_sends():
    address = f"127.0.0.1:{closed_port()}"
    result = run_tool("cluster_shrinker", "--external", address, "--workers", "w2,w3")
    assert result.returncode == 1, explain(result)
    assert result.stderr == f"Failed to connect to {address}\n".encode()
    frame = encode(external.SHRINK, "2")
    with RawListener(close_after=len(frame)) as listener:  # it closes without answering
        result = run_tool("cluster_shrinker", "--external", listener.address, "--count", "2")
        received = listener.wait_closed()
    assert received.data == frame
    assert result.returncode == 1 and b"did not answer" in result.stderr, explain(result)
    answer = encode(external.SHRINK_ERROR_RESPONSE, "Shrinking by 2 workers!")
    with RawListener(answer=answer) as listener:
        result = run_tool("cluster_shrinker", "--external", listener.address, "--count", "2")
    assert result.stdout == b"Cluster shrink response: Shrinking by 2 workers!\n", explain(result)
