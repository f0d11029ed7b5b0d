"""Tests of the validator's input side: wallaroo_tools.layouts and the stream validator.

Each reader is tested whole, byte by byte and with trailing bytes; payload
parsing against the spec's examples; arbitrary bytes must end in a documented
error, never another exception or a hang (scenario 56). The stream validator,
which skips expected windows as raw bytes, must give exactly the literal
model's verdict for any run, in any layout, however the bytes are chunked.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_validator_model import interleavings, model, mutated_runs, recorded

from wallaroo_tools.fixtures import RunRecorder, convert, fixture
from wallaroo_tools.layouts import (
    FRAMED,
    GILES,
    LAYOUTS,
    LINES,
    DecodeError,
    WindowParseError,
    decoder_for,
    detect_layout,
    encode_record,
    encode_records,
    parse_window,
    records,
)
from wallaroo_tools.validation import (
    EVEN,
    ODD,
    TESTABLE_MAX,
    ValidationError,
    expected_ring,
    format_window,
)
from wallaroo_tools.validator import (
    StreamValidator,
    expected_payloads,
    validate_bytes,
    validate_chunks,
)

PROPERTY = settings(max_examples=80, deadline=None)
SAMPLE = [(5, b"[0,0,0,1]"), (9, b"[0,0,0,2]"), (12, b""), (13, b"[0, 0, 1, 3]")]


def decode_in_pieces(data: bytes, layout: str, cuts: list[int]) -> list[tuple[int, bytes]]:
    """Feed ``data`` cut at ``cuts``, then close; every record, in order."""
    decoder = decoder_for(layout)
    out: list[tuple[int, bytes]] = []
    bounds = [0, *sorted(cuts), len(data)]
    for start, stop in zip(bounds, bounds[1:]):
        out.extend(zip(*decoder.feed(data[start:stop])))
    out.extend(zip(*decoder.close()))
    return out


def numbered(items):
    return [(i, payload) for i, (_, payload) in enumerate(items)]


# -- Detection.


@pytest.mark.parametrize(
    ("head", "layout"),
    [
        (b"", LINES),
        (b"[0,0,0,1]\n", LINES),
        (b"Listening on 127.0.0.1:7002\n", LINES),
        (b"Listening on", LINES),
        (b"\x00\x00\x00\x09[0,0,0,1]", FRAMED),
        (encode_record(GILES, 0, b"[0,0,0,1]"), GILES),
        (b"\x00\x00", GILES),
        (b"Listen", GILES),
    ],
)
def test_detect_layout(head, layout):
    assert detect_layout(head) == layout


# -- Payload parsing.


@pytest.mark.parametrize(
    "payload", [b"[1,2,3,4]", b"[1, 2, 3, 4]", b"[1,2,3,4]\n", b"x[1,,2 3]4]y", b"[01,2,3,4]"]
)
def test_parse_window_spec_examples(payload):
    assert parse_window(payload) == [1, 2, 3, 4]


@pytest.mark.parametrize(
    ("payload", "window"),
    [(b"", []), (b"5", []), (b"[]", []), (b"[7]", [7]), (b"[18446744073709551615]", [2**64 - 1])],
)
def test_parse_window_edges(payload, window):
    assert parse_window(payload) == window


@pytest.mark.parametrize(
    "payload",
    [b"[1,x,3,4]", b"[18446744073709551616]", b"[+1]", b"[-1]", b"[1_0]", b"[\xd9\xa1]", b"[1\t]"],
)
def test_parse_window_rejects_pieces_that_are_not_decimal_u64(payload):
    with pytest.raises(WindowParseError) as err:
        parse_window(payload, ts=42)
    assert str(err.value).startswith("Could not parse window at 42: ")
    assert err.value.payload == payload


def test_parse_error_message_stays_on_one_line():
    err = WindowParseError(3, b"[1,\x00x]\n")
    assert str(err) == "Could not parse window at 3: [1,\\x00x]"


# -- Readers: whole, byte by byte, with trailing bytes.


@pytest.mark.parametrize("layout", LAYOUTS)
def test_reader_whole_and_byte_by_byte(layout):
    data = encode_records(layout, SAMPLE)
    expected = SAMPLE if layout == GILES else numbered(SAMPLE)
    assert list(records(data, layout)) == expected
    assert decode_in_pieces(data, layout, list(range(1, len(data)))) == expected


@pytest.mark.parametrize("layout", [GILES, FRAMED])
@pytest.mark.parametrize("extra", [b"\x00", b"\x00\x00\x00\x05[1,", b"\x00\x00\x01\x00" + b"x" * 7])
def test_binary_reader_with_trailing_bytes(layout, extra):
    data = encode_records(layout, SAMPLE) + extra
    decoder = decoder_for(layout)
    assert len(decoder.feed(data).payloads) == len(SAMPLE)
    assert decoder.pending == len(extra)
    with pytest.raises(DecodeError, match=r"^Problem decoding!$"):
        decoder.close()


def test_records_yields_what_precedes_a_truncation_first():
    data = encode_records(FRAMED, SAMPLE)[:-1]
    seen = []
    with pytest.raises(DecodeError):
        for record in records(data, FRAMED):
            seen.append(record)
    assert seen == numbered(SAMPLE[:-1])


def test_a_huge_length_waits_for_the_end_and_then_fails():
    decoder = decoder_for(FRAMED)
    assert decoder.feed(b"\xff\xff\xff\xff[0,0").payloads == []
    for _ in range(100):
        assert decoder.feed(b"0" * 1000).payloads == []
    with pytest.raises(DecodeError):
        decoder.close()


def test_lines_reader_skips_listening_lines_and_keeps_the_last_line():
    data = b"Listening on 127.0.0.1:7002\n[0,0,0,1]\n\nListening on x\n[0,0,0,2]"
    assert list(records(data, LINES)) == [(0, b"[0,0,0,1]"), (1, b""), (2, b"[0,0,0,2]")]
    assert list(records(b"[1]\nListening on y", LINES)) == [(0, b"[1]")]
    # Only at a line start: anywhere else it is part of a payload.
    assert list(records(b"[1] Listening on \n", LINES)) == [(0, b"[1] Listening on ")]


def test_lines_record_cannot_hold_a_newline():
    with pytest.raises(ValueError):
        encode_record(LINES, 0, b"[1]\n[2]")


def test_encode_rejects_unknown_layouts():
    with pytest.raises(ValueError):
        encode_record("xml", 0, b"")


def test_convert_keeps_payloads_and_giles_stamps():
    giles = fixture("fail_sequentiality.txt")
    for layout in LAYOUTS:
        converted = convert(giles, layout)
        assert converted == fixture("fail_sequentiality.txt", layout)
        payloads = [p for _, p in records(converted, layout)]
        assert payloads == [p for _, p in records(giles, GILES)]
    assert [ts for ts, _ in records(giles, GILES)][100] == 110


@PROPERTY
@given(st.sampled_from(LAYOUTS), interleavings(max_n=40), st.lists(st.integers(0, 10_000)))
def test_any_split_of_a_valid_stream_gives_the_same_records(layout, values, cuts):
    items = recorded(values)
    data = encode_records(layout, items)
    cuts = [c % (len(data) + 1) for c in cuts]
    assert decode_in_pieces(data, layout, cuts) == list(records(data, layout))


# -- Arbitrary bytes (scenario 56): documented errors only, no hang.


@PROPERTY
@given(st.sampled_from(LAYOUTS), st.binary(max_size=300), st.lists(st.integers(0, 300)))
def test_readers_on_arbitrary_bytes(layout, data, cuts):
    try:
        whole = list(records(data, layout))
    except DecodeError:
        whole = None
    try:
        pieces = decode_in_pieces(data, layout, [c % (len(data) + 1) for c in cuts])
    except DecodeError:
        pieces = None
    assert pieces == whole
    for ts, payload in whole or []:
        try:
            window = parse_window(payload, ts)
        except WindowParseError:
            continue
        assert all(0 <= value < 2**64 for value in window)


@PROPERTY
@given(st.binary(max_size=400), st.sampled_from(["auto", *LAYOUTS]), st.booleans())
def test_stream_validator_on_arbitrary_bytes(data, layout, at_least_once):
    stream = StreamValidator(layout, 6, at_least_once)
    try:
        stream.feed(data)
        stream.close()
    except (ValidationError, DecodeError, WindowParseError):
        pass


# -- The stream validator's shortcut gives the rules' verdict.


def test_expected_payloads_match_the_rings():
    for parity in (EVEN, ODD):
        for first in range(1, 12):
            for n in range(1, 6):
                rings = [expected_ring(parity, k) for k in range(first, first + n)]
                assert expected_payloads(parity, first, n) == [
                    format_window(r).encode() for r in rings
                ]


def test_expected_payloads_stop_at_the_testable_range():
    last_even = TESTABLE_MAX // 2  # the push whose value is 2**63 - 2
    got = expected_payloads(EVEN, last_even - 1, 5)
    assert got == [
        format_window(expected_ring(EVEN, k)).encode() for k in (last_even - 1, last_even)
    ]
    assert expected_payloads(ODD, last_even + 2, 3) == []


def test_windows_past_the_testable_range_take_the_full_rules():
    top = TESTABLE_MAX // 2 + 1  # the odd push whose value is 2**63 - 1
    stream = StreamValidator(LINES)
    # No real run gets here (a counter grows by one per window); set it directly.
    stream.validator.counts[ODD] = top - 1
    data = b"".join(format_window(expected_ring(ODD, k)).encode() + b"\n" for k in (top, top + 1))
    with pytest.raises(ValidationError, match=r"^Testable range test failed at 1 on "):
        stream.feed(data)
    assert stream.validator.counts[ODD] == top


@settings(max_examples=200, deadline=None)
@given(
    mutated_runs(junk=st.binary(max_size=12).filter(lambda b: b"\n" not in b)),
    st.sampled_from(LAYOUTS),
    st.integers(0, 70),
    st.booleans(),
    st.lists(st.integers(0, 4000), max_size=6),
)
def test_stream_validator_agrees_with_the_literal_model(items, layout, expected, alo, cuts):
    if layout == LINES:
        items = [(ts, p) for ts, p in items if not p.startswith(b"Listening on ")]
        items = [(i, p) for i, (_, p) in enumerate(items)]
    data = encode_records(layout, items)
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    result = validate_chunks(chunks, layout, expected, alo)
    assert result.message == model(items, expected, alo)


def test_many_replays_stay_correct_and_linear():
    run = RunRecorder()
    for _ in range(300):  # a crash and full replay of both parities, 300 times over
        run.rings = [[0, 0, 0, 0], [0, 0, 0, 0]]
        run.write(range(1, 41))
    data = run.encode(FRAMED)
    assert validate_bytes(data, expected=40, at_least_once=True).ok
    assert not validate_bytes(data, expected=40).ok


def test_auto_detection_survives_tiny_chunks():
    data = b"Listening on 127.0.0.1:7002\n" + fixture("pass.txt", LINES)
    chunks = [data[i : i + 1] for i in range(64)] + [data[64:]]
    assert validate_chunks(chunks).ok
    assert validate_chunks([fixture("pass.txt", FRAMED)[:3]]).message == "Problem decoding!"
