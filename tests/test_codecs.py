"""Pure tests of the shared codecs: Pony-style options, u32 frames, and source framing."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from machida.options import Option, OptionParser, UsageError, parse_int, strip_pony_options
from machida.wire.framing import FrameDecoder, encode_frame
from machida.wire.source import MAX_PAYLOAD, SourceFramer

# -- options ------------------------------------------------------------------------------

OPTS = [
    Option("host", "h"),
    Option("messages", "m", kind="int", minimum=0),
    Option("binary", "y", kind="flag", default=False),
    Option("msg-size", "g", kind="int", minimum=1),
]


@pytest.mark.parametrize(
    ("text", "value"),
    [("100_000_000", 100_000_000), ("0x10", 16), ("0b101", 5), ("-3", -3), ("7", 7)],
)
def test_parse_int_pony_forms(text, value):
    assert parse_int(text) == value


@pytest.mark.parametrize(
    "text", ["", "abc", "1.5", "0x", "1e3", "--1", " 7", "\u0661\u0662", "0b12"]
)
def test_parse_int_rejects(text):
    with pytest.raises(ValueError):
        parse_int(text)


def test_long_short_and_inline_forms_agree():
    parser = OptionParser(OPTS)
    a = parser.parse(["--host", "h:1", "--messages", "1_000", "--binary", "--msg-size", "12"])
    b = parser.parse(["--host=h:1", "--messages=1000", "-y", "-g12"])
    c = parser.parse(["-h", "h:1", "-m", "1000", "-y", "-g", "12"])
    assert a.values == b.values == c.values
    assert a.values == {"host": "h:1", "messages": 1000, "binary": True, "msg_size": 12}
    assert a.given == {"host", "messages", "binary", "msg_size"}


def test_pony_options_are_removed_in_every_form():
    argv = [
        "--ponythreads=1",
        "--ponynoblock",
        "--ponythreads",
        "4",
        "-m",
        "3",
        "--ponypinasio",
        "--ponygcfactor",
        "2",
        "--ponyanything=x",
    ]
    assert strip_pony_options(argv) == ["-m", "3"]
    assert OptionParser(OPTS).parse(argv).values["messages"] == 3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--bogus"], "unknown option --bogus"),
        (["-q"], "unknown option -q"),
        (["--messages"], "option --messages needs a value"),
        (["--host", "-y"], "option --host needs a value"),
        (["-g", "-12"], "option --msg-size needs a value"),
        (["--msg-size=-12"], "option --msg-size must be at least 1, got '-12'"),
        (["--messages", "ten"], "option --messages needs an integer, got 'ten'"),
        (["--binary=yes"], "option --binary takes no value"),
    ],
)
def test_usage_errors(argv, message):
    with pytest.raises(UsageError) as err:
        OptionParser(OPTS).parse(argv)
    assert str(err.value) == message


def test_unknown_options_can_be_kept_in_place():
    parsed = OptionParser(OPTS, keep_unknown=True).parse(["--in", "a:1", "-m", "2", "--foo", "x"])
    assert parsed.rest == ["--in", "a:1", "--foo", "x"]
    assert parsed.values["messages"] == 2


# -- u32 frames ---------------------------------------------------------------------------


def test_frame_decoder_whole_byte_by_byte_and_with_trailing_bytes():
    stream = encode_frame(b"[0,0,0,1]") + encode_frame(b"") + encode_frame(b"xyz")
    assert FrameDecoder().feed(stream) == [b"[0,0,0,1]", b"", b"xyz"]
    dec = FrameDecoder()
    got = [f for i in range(len(stream)) for f in dec.feed(stream[i : i + 1])]
    assert got == [b"[0,0,0,1]", b"", b"xyz"]
    dec = FrameDecoder()
    assert dec.feed(stream + b"\x00\x00") == [b"[0,0,0,1]", b"", b"xyz"]
    assert dec.pending == 2


def test_frame_decoder_oversize_keeps_earlier_frames_and_stops():
    dec = FrameDecoder()
    assert dec.feed(encode_frame(b"ok") + b"\xff\xff\xff\xff" + encode_frame(b"late")) == [b"ok"]
    assert dec.error is not None and dec.error.length == 0xFFFFFFFF
    assert dec.feed(encode_frame(b"more")) == []


@settings(max_examples=100)
@given(st.lists(st.binary(max_size=40), max_size=20), st.lists(st.integers(0, 2000), max_size=10))
def test_frame_decoder_random_splits(payloads, cuts):
    stream = b"".join(encode_frame(p) for p in payloads)
    points = sorted({c % (len(stream) + 1) for c in cuts})
    dec = FrameDecoder()
    got = []
    for a, b in zip([0, *points], [*points, len(stream)]):
        got.extend(dec.feed(stream[a:b]))
    assert got == payloads and dec.pending == 0


@settings(max_examples=100)
@given(st.binary(max_size=300))
def test_frame_decoder_random_bytes_never_raise(data):
    dec = FrameDecoder(max_length=64)
    frames = dec.feed(data)
    assert sum(4 + len(f) for f in frames) + dec.pending <= len(data) or dec.error


# -- source framing with the application's decoder ----------------------------------------


class U32:
    calls = 0

    def payload_length(self, header):
        U32.calls += 1
        return struct.unpack(">I", header)[0]


class OneByteHeader:
    def payload_length(self, header):
        return header[0]


def test_source_framer_calls_payload_length_once_per_frame():
    U32.calls = 0
    framer = SourceFramer(U32(), 4)
    stream = b"".join(struct.pack(">IQ", 8, v) for v in range(1, 4))
    got = [f for i in range(len(stream)) for f in framer.feed(stream[i : i + 1])]
    assert got == [struct.pack(">Q", v) for v in range(1, 4)]
    assert U32.calls == 3


def test_source_framer_other_header_lengths():
    framer = SourceFramer(OneByteHeader(), 1)
    assert framer.feed(b"\x02ab\x01c\x03de") == [b"ab", b"c"]
    assert framer.pending == 3
    assert framer.feed(b"f") == [b"def"]


@pytest.mark.parametrize("bad", [0, -1, None, "8", 8.0, True, MAX_PAYLOAD + 1])
def test_source_framer_refuses_bad_lengths(bad):
    class Bad:
        def payload_length(self, header):
            return bad if header == b"\xee" else header[0]

    framer = SourceFramer(Bad(), 1, "Bad.payload_length")
    assert framer.feed(b"\x01a\xee\x01b") == [b"a"]
    assert framer.error.length == bad and framer.error.callback == "Bad.payload_length"
    assert framer.feed(b"\x01c") == []


def test_source_framer_reports_a_raising_payload_length():
    class Raises:
        def payload_length(self, header):
            raise ValueError("no")

    framer = SourceFramer(Raises(), 4)
    assert framer.feed(b"\x00\x00\x00\x08") == []
    assert isinstance(framer.error.exc, ValueError)


@settings(max_examples=100)
@given(st.lists(st.binary(min_size=1, max_size=30), max_size=15), st.integers(1, 50))
def test_source_framer_random_splits(payloads, step):
    stream = b"".join(struct.pack(">I", len(p)) + p for p in payloads)
    framer = SourceFramer(U32(), 4)
    got = []
    for i in range(0, len(stream), step):
        got.extend(framer.feed(stream[i : i + step]))
    assert got == payloads and framer.error is None


def test_a_large_frame_in_many_small_reads_is_collected_whole():
    payload = bytes(range(256)) * 4096  # 1 MiB
    stream = encode_frame(payload) + encode_frame(b"next")
    dec = FrameDecoder()
    src = SourceFramer(U32(), 4)
    got, got_src = [], []
    for i in range(0, len(stream), 1000):
        got.extend(dec.feed(stream[i : i + 1000]))
        got_src.extend(src.feed(stream[i : i + 1000]))
        if i + 1000 < len(payload):
            assert dec.pending == src.pending == i + 1000
    assert got == got_src == [payload, b"next"]
    assert dec.pending == src.pending == 0
