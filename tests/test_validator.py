"""The ``validator`` command as a user runs it: real processes on files in tmp_path.

Covers the fixture table of tools.md §5.6 in all three layouts, the validator
scenarios 27-33 of scenarios.md, and the command line (flags, help, errors).
Rules and layouts are unit-tested in test_validator_rules.py and
test_validator_layouts.py.
"""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wallaroo_tools.fixtures import FIXTURES, RunRecorder, convert, fixture
from wallaroo_tools.layouts import FRAMED, GILES, LAYOUTS, LINES, encode_record, encode_records
from wallaroo_tools.validator import HELP, USAGE, StreamValidator

TIMEOUT = 60
OK_OUT = "Validation successful!\n"
FAIL_OUT = "Error validating file.\n"


def run_validator(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "wallaroo_tools.validator", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, cwd=cwd)


def explain(done: subprocess.CompletedProcess) -> str:
    return f"exit {done.returncode}\nstdout: {done.stdout!r}\nstderr: {done.stderr!r}"


def assert_passes(done: subprocess.CompletedProcess) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (0, OK_OUT, ""), explain(done)


def assert_fails(done: subprocess.CompletedProcess, message: str) -> None:
    assert (done.returncode, done.stdout, done.stderr) == (1, FAIL_OUT, message + "\n"), explain(
        done
    )


def write(tmp_path: Path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


# -- The fixture table (scenario 27), in every layout.

SEQUENTIALITY_GAP = (
    "Sequentiality test failed at {ts}. Expected [95,97,99,101] but got [105,107,109,111]"
    " after 101 values"
)
# (fixture, flags, expected message or None for a pass). The failing window's
# ts is {ts}: giles keeps the generator's ts, the other layouts count records.
FIXTURE_RUNS = [
    ("pass.txt", [], None),
    ("pass.txt", ["-a"], None),
    ("pass_with_atleastonce.txt", ["-a"], None),
    (
        "pass_with_atleastonce.txt",
        [],
        "Sequentiality test failed at {ts}. Expected [495,497,499,501] but got"
        " [395,397,399,401] after 501 values",
    ),
    ("fail_expect_max.txt", ["-e", "1002"], None),
    (
        "fail_expect_max.txt",
        [],
        "Expected max test failed with final windows [996,998,1000,1002] and"
        " [995,997,999,1001] and expected value 1000 after 1002 values",
    ),
    (
        "fail_increments.txt",
        [],
        "Increments test failed at {ts} on [95,97,99,81] after 101 values",
    ),
    ("fail_sequentiality.txt", [], SEQUENTIALITY_GAP),
    ("fail_sequentiality.txt", ["-a"], SEQUENTIALITY_GAP),
    ("fail_size.txt", [], "Size test failed at {ts} on [94,96,98,100,102] after 102 values"),
    (
        "fail_no_nonlead_zeroes.txt",
        [],
        "No non-leading zeroes test failed at {ts} on [98,100,0,102] after 102 values",
    ),
    ("fail_parity.txt", [], "Parity test failed at {ts} on [98,100,101,102] after 101 values"),
    (
        "fail_expected_difference.txt",
        [],
        "Expected difference test failed with final windows [994,996,998,1000] and"
        " [991,993,995,997] and expected value 1000 after 999 values",
    ),
]
# ts of the failing window: (giles, framed and lines). They differ only where
# the generator skipped pushes (fail_sequentiality drops 101..110).
FAILURE_TS = {
    "pass_with_atleastonce.txt": (500, 500),
    "fail_increments.txt": (100, 100),
    "fail_sequentiality.txt": (110, 100),
    "fail_size.txt": (101, 101),
    "fail_no_nonlead_zeroes.txt": (101, 101),
    "fail_parity.txt": (100, 100),
}


def test_the_table_covers_every_fixture():
    assert {name for name, _, _ in FIXTURE_RUNS} == set(FIXTURES)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize(("name", "flags", "message"), FIXTURE_RUNS)
def test_fixture_outcome(tmp_path, layout, name, flags, message):
    path = write(tmp_path, name, fixture(name, layout))
    done = run_validator(*flags, "-i", path)
    if message is None:
        assert_passes(done)
    else:
        giles_ts, index_ts = FAILURE_TS.get(name, (None, None))
        assert_fails(done, message.format(ts=giles_ts if layout == GILES else index_ts))


def test_console_script_is_installed_and_runs(tmp_path):
    script = Path(sys.executable).with_name("validator")
    path = write(tmp_path, "pass.txt", fixture("pass.txt"))
    done = subprocess.run([str(script), "-i", path], capture_output=True, text=True, timeout=60)
    assert_passes(done)
    bad = write(tmp_path, "bad.txt", fixture("fail_parity.txt"))
    done = subprocess.run([str(script), "-i", bad], capture_output=True, text=True, timeout=60)
    assert_fails(done, "Parity test failed at 100 on [98,100,101,102] after 101 values")


def test_default_input_is_received_txt(tmp_path):
    (tmp_path / "received.txt").write_bytes(fixture("pass.txt", FRAMED))
    assert_passes(run_validator(cwd=tmp_path))


# -- Scenarios 28-33.


def full_run(n: int = 1000) -> RunRecorder:
    run = RunRecorder()
    run.write(range(1, n + 1))
    return run


def test_missing_even_window_fails_in_both_modes(tmp_path):
    records = full_run().records
    del records[499]  # the window ending in 500
    path = write(tmp_path, "gap.txt", encode_records(FRAMED, records))
    message = (
        "Sequentiality test failed at 500. Expected [494,496,498,500] but got"
        " [496,498,500,502] after 501 values"
    )
    assert_fails(run_validator("-i", path), message)
    assert_fails(run_validator("-a", "-i", path), message)


def test_duplicated_even_window_fails_strict_and_passes_at_least_once(tmp_path):
    records = full_run().records
    records.insert(500, records[499])  # [494,496,498,500] twice, 501's window between
    path = write(tmp_path, "dup.txt", encode_records(LINES, records))
    assert_fails(
        run_validator("-i", path),
        "Sequentiality test failed at 500. Expected [496,498,500,502] but got"
        " [494,496,498,500] after 501 values",
    )
    assert_passes(run_validator("-a", "-i", path))


@pytest.mark.parametrize("content", [b"", b"Listening on 127.0.0.1:7002\n"])
def test_a_file_without_windows_says_so(tmp_path, content):
    path = write(tmp_path, "empty.txt", content)
    assert_fails(run_validator("-i", path), f"Input file '{path}' holds no windows to validate.")


@pytest.mark.parametrize("layout", [GILES, FRAMED])
@pytest.mark.parametrize("cut", [1, 5, 11])
def test_truncated_final_record_is_a_decoding_problem(tmp_path, layout, cut):
    data = fixture("pass.txt", layout)
    path = write(tmp_path, "cut.txt", data[:-cut])
    assert_fails(run_validator("-i", path), "Problem decoding!")


def test_a_failure_before_the_truncation_is_reported_first(tmp_path):
    data = fixture("fail_increments.txt", FRAMED)
    path = write(tmp_path, "cut.txt", data[:-3])
    assert_fails(
        run_validator("-i", path), "Increments test failed at 100 on [95,97,99,81] after 101 values"
    )


def test_missing_file(tmp_path):
    path = str(tmp_path / "nowhere.txt")
    assert_fails(run_validator("-i", path), f"Input file '{path}' does not exist.")


def test_unparsable_window_names_its_ts(tmp_path):
    records = full_run(10).records
    records[3] = (3, b"[0,1,x,5]")
    path = write(tmp_path, "bad.txt", encode_records(LINES, records))
    assert_fails(run_validator("-i", path), "Could not parse window at 3: [0,1,x,5]")


def test_payloads_with_spaces_and_newlines_validate(tmp_path):
    records = [(ts, payload.replace(b",", b", ") + b"\n") for ts, payload in full_run().records]
    path = write(tmp_path, "spaced.txt", encode_records(FRAMED, records))
    assert_passes(run_validator("-i", path))


@pytest.mark.parametrize(
    "flags",
    [
        ["-e", "1002"],
        ["-e1002"],
        ["-e", "1_002"],
        ["--expected", "1002"],
        ["--expected=1002"],
        ["--expect", "1002"],
        ["--expect=1002"],
        ["-e", "7", "--expect", "1002"],
    ],
)
def test_every_spelling_of_the_expected_value_sets_it(tmp_path, flags):
    path = write(tmp_path, "max.txt", fixture("fail_expect_max.txt"))
    assert_passes(run_validator(*flags, "-i", path))


def test_expected_value_really_matters(tmp_path):
    path = write(tmp_path, "pass.txt", fixture("pass.txt"))
    done = run_validator("-e", "1_002", "-i", path)
    assert done.returncode == 1 and "expected value 1002" in done.stderr, explain(done)


@pytest.mark.parametrize("layout", [FRAMED, LINES, GILES])
def test_auto_detects_each_layout(tmp_path, layout):
    data = convert(fixture("pass.txt"), layout)
    stream = StreamValidator()
    stream.feed(data)
    stream.close()
    assert stream.layout == layout
    assert_passes(run_validator("-i", write(tmp_path, "pass.txt", data)))
    assert_passes(run_validator("--format", layout, "-i", write(tmp_path, "pass.txt", data)))


def test_wrong_explicit_format_does_not_validate(tmp_path):
    path = write(tmp_path, "pass.txt", fixture("pass.txt", LINES))
    done = run_validator("--format", "framed", "-i", path)
    assert done.returncode == 1 and done.stdout == FAIL_OUT, explain(done)


def test_data_receiver_output_with_listening_lines(tmp_path):
    lines = fixture("pass.txt", LINES).split(b"\n")
    # A second listening line, as when a restarted receiver appends to the file.
    data = b"\n".join(
        [b"Listening on 127.0.0.1:7002", *lines[:600], b"Listening on 127.0.0.1:7002", *lines[600:]]
    )
    assert_passes(run_validator("-i", write(tmp_path, "received.txt", data)))


def test_listening_lines_do_not_count_as_records(tmp_path):
    lines = fixture("fail_parity.txt", LINES).split(b"\n")
    data = b"\n".join([b"Listening on 127.0.0.1:7002", *lines[:50], b"Listening on x", *lines[50:]])
    assert_fails(
        run_validator("-i", write(tmp_path, "received.txt", data)),
        "Parity test failed at 100 on [98,100,101,102] after 101 values",
    )


def test_last_line_without_newline_counts(tmp_path):
    data = fixture("pass.txt", LINES).rstrip(b"\n")
    assert_passes(run_validator("-i", write(tmp_path, "received.txt", data)))
    data = fixture("fail_expect_max.txt", LINES).rstrip(b"\n")
    done = run_validator("-e", "1002", "-i", write(tmp_path, "received.txt", data))
    assert_passes(done)


# -- The command line.


def test_help_prints_the_parameter_table():
    for flag in ("-h", "--help"):
        done = run_validator(flag)
        assert (done.returncode, done.stdout, done.stderr) == (0, HELP + "\n", "")
    for option in ("--input/-i", "--expected/-e", "--expect ", "--at-least-once/-a", "--format"):
        assert option in HELP


@pytest.mark.parametrize(
    ("flags", "error"),
    [
        (["--bogus"], "Error: unknown option --bogus"),
        (["-x"], "Error: unknown option -x"),
        (["-e"], "Error: option --expected needs a value"),
        (["-e", "-a"], "Error: option --expected needs a value"),
        (["-e", "abc"], "Error: option --expected needs an integer, got 'abc'"),
        (["-e", "-5"], "Error: option --expected needs a value"),
        (["--expected=-5"], "Error: option --expected must be at least 0, got '-5'"),
        (["-i"], "Error: option --input needs a value"),
        (
            ["--format", "xml"],
            "Error: option --format must be one of auto, giles, framed, lines, got 'xml'",
        ),
        (["-a=1"], "Error: option --at-least-once takes no value"),
        (["received.txt"], "Error: unexpected argument 'received.txt'"),
    ],
)
def test_bad_flags_print_an_error_and_the_usage(tmp_path, flags, error):
    done = run_validator(*flags, cwd=tmp_path)
    assert (done.returncode, done.stdout, done.stderr) == (1, "", f"{error}\n{USAGE}\n"), explain(
        done
    )


def test_lenient_expect_ignores_a_bad_value_and_goes_on(tmp_path):
    path = write(tmp_path, "pass.txt", fixture("pass.txt"))
    done = run_validator("--expect", "abc", "-i", path)
    assert (done.returncode, done.stdout) == (0, OK_OUT), explain(done)
    assert done.stderr == "Warning: ignoring --expect with value 'abc'\n"
    done = run_validator("--expect", "-a", "-i", path)
    assert (done.returncode, done.stdout) == (0, OK_OUT), explain(done)
    assert done.stderr == "Warning: ignoring --expect with no value\n"


def test_pony_runtime_options_are_ignored(tmp_path):
    path = write(tmp_path, "pass.txt", fixture("pass.txt"))
    assert_passes(
        run_validator("--ponythreads=1", "--ponynoblock", "--ponythreads", "2", "-i", path)
    )


def test_input_that_is_a_directory_fails_cleanly(tmp_path):
    done = run_validator("-i", str(tmp_path))
    assert (done.returncode, done.stdout) == (1, FAIL_OUT), explain(done)
    assert done.stderr.startswith(f"Could not read input file '{tmp_path}'"), explain(done)


@pytest.mark.skipif(os.name != "posix", reason="Unix paths")
def test_fixtures_command_writes_every_fixture(tmp_path):
    cmd = [sys.executable, "-m", "wallaroo_tools.fixtures", "--format", "lines", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(FIXTURES)
    assert (tmp_path / "pass.txt").read_bytes() == fixture("pass.txt", LINES)


# -- End to end with the real data_receiver (scenario 33 and the giles receiver layout).


def test_real_data_receiver_output_validates(tmp_path):
    pytest.importorskip("wallaroo_tools.data_receiver")
    giles_out = tmp_path / "received.giles"
    cmd = [sys.executable, "-m", "wallaroo_tools.data_receiver", "--listen", "127.0.0.1:0"]
    cmd += ["--framed", "--expect", "1000", "--output", str(giles_out)]
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        try:
            first = read_line(proc.stdout, deadline=time.monotonic() + TIMEOUT)
            assert first.startswith(b"Listening on "), first
            host, port = first.split()[-1].decode().rsplit(":", 1)
            payloads = [payload for _, payload in full_run().records]
            # Two connections as from two workers: even windows on one, odd on the other.
            for parity in (0, 1):
                chunk = b"".join(
                    encode_record(FRAMED, 0, p) for p in payloads if int(p[-2:-1]) % 2 == parity
                )
                with socket.create_connection((host, int(port)), timeout=TIMEOUT) as sock:
                    sock.sendall(chunk)
            rest, err = proc.communicate(timeout=TIMEOUT)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    received = write(tmp_path, "received.txt", first + rest)
    assert_passes(run_validator("-i", received))
    assert_passes(run_validator("-i", str(giles_out)))
    assert_fails(run_validator("-e", "999", "-i", str(giles_out)), expected_max_message(999))


def read_line(pipe, deadline: float) -> bytes:
    """One line from ``pipe``, waiting no later than ``deadline``."""
    line = b""
    while not line.endswith(b"\n"):
        ready, _, _ = select.select([pipe], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no full line before the deadline: {line!r}")
        byte = os.read(pipe.fileno(), 1)
        if not byte:
            raise AssertionError(f"end of output inside the first line: {line!r}")
        line += byte
    return line


def expected_max_message(expected: int) -> str:
    return (
        "Expected max test failed with final windows [994,996,998,1000] and"
        f" [993,995,997,999] and expected value {expected} after 1000 values"
    )
