"""integration_test: Wallaroo's 2017 harness command line over real clusters.

Every test runs ``python -m wallaroo_tools.integration_test`` in its own
directory with the project's console scripts first on PATH and tests/apps on
PYTHONPATH (as 2017 users set it), so the workers are real ``machida``
processes. tests/apps/echo.py sends each payload back tagged with its source
(``L:`` for source 0, ``R:`` for source 1). Each test checks the exit status
and the lines the harness printed (tools.md §7).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from machida.durability import recovery
from wallaroo_tools.integration import harness
from wallaroo_tools.integration.inputs import InputError, parse_range
from wallaroo_tools.layouts import FRAMED, GILES, records

APPS = Path(__file__).resolve().parent / "apps"
BIN = Path(sys.executable).parent
ECHO = "machida --application-module echo"


def integration_test(tmp_path, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    env = dict(os.environ, PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}", PYTHONPATH=str(APPS))
    argv = [sys.executable, "-m", "wallaroo_tools.integration_test", *args]
    if "--resilience-dir" not in args:
        argv += ["--resilience-dir", str(tmp_path / "res")]
    return subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


def explain(result: subprocess.CompletedProcess) -> str:
    out, err = result.stdout, result.stderr
    return f"exit {result.returncode}\n--- stdout ---\n{out}\n--- stderr ---\n{err}"


def framed(*payloads: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(p)) + p for p in payloads)


def commands(log: str) -> dict[str, list[str]]:
    """Each worker's command line, from the ``<name>: Running:`` lines of the log."""
    found = re.findall(r"INFO - (\w+): Running:\n(.*)", log)
    return {name: line.split() for name, line in found}


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


# -- senders, the worker command lines, giles mode and a validation command -----------------------


def test_a_sequence_sender_run_on_two_workers_passes_the_validator_in_giles_mode(tmp_path):
    result = integration_test(
        tmp_path, "--sequence-sender", "(0,1000]", "--workers", "2", "--batch-size", "50",
        "--command", "machida --application-module sequence_window", "--giles-mode",
        "--output", "received.txt", "--validation-cmd", "validator -e 1000 -i",
        "--sink-expect", "1000", "--log-level", "info",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert "Validation command 'validator -e 1000 -i received.txt' completed successfully" in (
        result.stderr
    )
    assert "Integration test completed successfully for command" in result.stderr
    got = list(records((tmp_path / "received.txt").read_bytes(), GILES))
    assert [ts for ts, _ in got] == list(range(1000))  # giles mode: the record index
    assert not (tmp_path / "res").exists()  # created by the run, so removed after it


def test_workers_are_named_and_started_with_the_2017_flags_in_order(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "a", "--workers", "3", "--command", ECHO,
        "--validation-cmp", "--expected-csv", "L:a", "--sink-expect", "1",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    argvs = commands(result.stderr)
    assert list(argvs) == ["initializer", "worker1", "worker2"]  # also the start order
    init = argvs["initializer"]
    assert init[:3] == ["machida", "--application-module", "echo"]
    source = int(flag(init, "--in").rsplit(":", 1)[1])
    control = int(flag(init, "--control").rsplit(":", 1)[1])
    external = int(flag(init, "--external").rsplit(":", 1)[1])
    data = int(flag(init, "--data").rsplit(":", 1)[1])
    assert 50000 <= source < control < external < data  # chosen upward from 50000
    assert flag(init, "--worker-count") == "3" and "--cluster-initializer" in init
    for name, argv in argvs.items():
        assert flag(argv, "--name") == name
        assert argv[-3:] == ["--ponythreads=1", "--ponypinasio", "--ponynoblock"]
        for same in ("--in", "--out", "--metrics", "--control", "--resilience-dir"):
            assert flag(argv, same) == flag(init, same)
        if name != "initializer":
            for only in ("--worker-count", "--data", "--external", "--cluster-initializer"):
                assert only not in argv


def test_framed_file_sender_and_expected_file(tmp_path):
    (tmp_path / "in.bin").write_bytes(framed(b"a", b"bb", b"\x00\xffc"))
    (tmp_path / "expected.bin").write_bytes(framed(b"L:a", b"L:bb", b"L:\x00\xffc"))
    result = integration_test(
        tmp_path, "--framed-file-sender", "in.bin", "--command", ECHO, "--workers", "2",
        "--validation-cmp", "--expected-file", "expected.bin", "--sink-expect", "3",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)


def test_newline_file_sender_newline_sink_and_expected_csv(tmp_path):
    (tmp_path / "one.txt").write_bytes(b"first line\n\nsecond\n")
    (tmp_path / "two.txt").write_bytes(b"third")  # no newline at the end
    result = integration_test(
        tmp_path, "--newline-file-sender", "one.txt,two.txt", "--sink-mode", "newlines",
        "--command", f"{ECHO} --newlines", "--validation-cmp",
        "--expected-csv", "L:first line,L:second,L:third", "--sink-expect", "3",
        "--output", "lines.txt",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert (tmp_path / "lines.txt").read_bytes() == b"L:first line\nL:second\nL:third\n"


def test_csv_senders_to_two_sources_and_two_sinks_with_a_count_each(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "x,y", "1", "--csv-sender", "p", "0",
        "--sources", "2", "--sinks", "2", "--command", ECHO,
        "--sink-expect", "1", "--sink-expect", "2",
        "--validation-cmp", "--expected-csv", "L:p,R:x,R:y", "--output", "s0.bin,s1.bin",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert (tmp_path / "s0.bin").read_bytes() == framed(b"L:p")
    assert (tmp_path / "s1.bin").read_bytes() == framed(b"R:x", b"R:y")


def test_a_sender_header_format_is_used_for_its_records(tmp_path):
    expected = [b"L:x", b"L:yy", b"L:" + struct.pack(">Q", 7), b"L:" + struct.pack(">Q", 8)]
    (tmp_path / "expected.bin").write_bytes(framed(*expected))
    result = integration_test(
        tmp_path, "--csv-sender", "x,yy", "0", ">H", "--sequence-sender", "[7,8]", "0", ">H",
        "--command", f"{ECHO} --header >H", "--sink-expect", "4",
        "--validation-cmp", "--expected-file", "expected.bin",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)


def test_expected_string_is_compared_with_the_bytes_received(tmp_path):
    args = ["--csv-sender", "a,b", "--command", f"{ECHO} --newlines", "--sink-mode", "newlines",
            "--sink-expect", "2", "--validation-cmp", "--expected-string"]  # fmt: skip
    result = integration_test(tmp_path, *args, "L:a\nL:b\n")
    assert result.returncode == 0, explain(result)
    result = integration_test(tmp_path, *args, "L:a\nL:c\n")
    assert result.returncode == 1, explain(result)
    assert (
        "Validation failed in bytes 0:8 of expected file. Expected b'L:a\\nL:c\\n' but "
        "received b'L:a\\nL:b\\n'." in result.stderr
    )


# -- stop conditions ---------------------------------------------------------------------------


def test_sink_expect_fails_when_more_records_arrive(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "1,2,3,4,5", "--batch-size", "5", "--command", ECHO,
        "--sink-expect", "2", "--validation-cmp", "--expected-csv", "L:1,L:2",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "sink 0 has received too many messages. Expected 2 but got 5." in result.stderr
    assert "--- initializer (exit 0)" in result.stderr  # every worker's output follows


def test_sink_expect_times_out_when_fewer_arrive(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "1,2", "--command", ECHO, "--sink-expect", "3",
        "--sink-expect-timeout", "1", "--validation-cmp", "--expected-csv", "L:1,L:2",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "timed out after 1 seconds waiting for the sinks (sink 0: 2 of 3)" in result.stderr


def logged_at(log: str, message: str) -> datetime:
    """When the harness logged ``message`` (its log lines start with the asctime)."""
    line = next(line for line in log.splitlines() if message in line)
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")


def test_delay_waits_that_long_after_the_senders_then_validates(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "1,2", "--command", ECHO, "--delay", "1",
        "--validation-cmd", "true", "--output", "received.bin", "--log-level", "debug",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    waited = logged_at(result.stderr, "Waiting 1 seconds before shutting off workers.")
    stopped = logged_at(result.stderr, "Shutting down workers.")
    assert (stopped - waited).total_seconds() >= 0.999, explain(result)
    # how much arrives within the delay depends on the machine; what arrived is in order
    got = [body for _, body in records((tmp_path / "received.bin").read_bytes(), FRAMED)]
    assert got == [b"L:1", b"L:2"][: len(got)], got


def test_without_a_stop_condition_the_metrics_say_when_the_cluster_is_idle(tmp_path):
    result = integration_test(
        tmp_path, "--sequence-sender", "(0,200]", "--workers", "2", "--batch-size", "20",
        "--command", "machida --application-module sequence_window", "--giles-mode",
        "--output", "received.txt", "--validation-cmd", "validator -e 200 -i",
        "--log-level", "debug",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert "Waiting until metrics indicate no more traffic." in result.stderr
    assert "no stats record" not in result.stderr


def test_a_sink_that_gets_text_in_framed_mode_fails_at_once_and_says_why(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "hello", "--command", f"{ECHO} --newlines",
        "--sink-expect", "1", "--validation-cmp", "--expected-csv", "L:hello",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "is over 16 MiB" in result.stderr and "--sink-mode newlines" in result.stderr


# -- validation --------------------------------------------------------------------------------


def test_a_validation_command_gives_its_exit_status(tmp_path):
    (tmp_path / "check.py").write_text("import sys\nprint('checked', sys.argv[1:])\nsys.exit(3)\n")
    result = integration_test(
        tmp_path, "--csv-sender", "a", "--command", ECHO, "--sink-expect", "1",
        "--validation-cmd", "python check.py --output", "--output", "received.txt",
    )  # fmt: skip
    assert result.returncode == 3, explain(result)
    assert "Validation command 'python check.py --output received.txt' failed" in result.stderr
    assert "checked ['--output', 'received.txt']" in result.stderr


def test_a_failing_validator_fails_the_test(tmp_path):
    result = integration_test(
        tmp_path, "--sequence-sender", "(0,100]", "--batch-size", "20",
        "--command", "machida --application-module sequence_window", "--giles-mode",
        "--output", "received.txt", "--validation-cmd", "validator -e 99 -i",
        "--sink-expect", "100", "--log-level", "error",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "Expected max test failed" in result.stderr


def test_a_comparison_that_differs_fails_and_shows_the_records(tmp_path):
    result = integration_test(
        tmp_path, "--csv-sender", "a,b", "--command", ECHO, "--sink-expect", "2",
        "--validation-cmp", "--expected-csv", "L:a,L:c", "--log-level", "none",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    # with the log level above errors, the reason still reaches stderr, in one line
    assert result.stderr.splitlines() == [
        "integration_test: Validation failed. Expected 2 record(s), received 2; the first "
        "difference is at record 1. Expected ['L:a', 'L:c'] but received ['L:a', 'L:b']."
    ]


# -- resilience, logs --------------------------------------------------------------------------


def test_a_resilient_command_runs_and_its_recovery_files_are_cleared(tmp_path):
    res = tmp_path / "res"
    res.mkdir()
    # a left-over recovery file of another run: the runner would refuse it if it stayed
    (res / "sequence_window-initializer.local-topology").write_text("{}")
    result = integration_test(
        tmp_path, "--sequence-sender", "(0,200]", "--workers", "2", "--batch-size", "20",
        "--command", "machida --run-with-resilience --application-module sequence_window",
        "--giles-mode", "--output", "received.txt", "--validation-cmd", "validator -e 200 -i",
        "--sink-expect", "200", "--log-level", "debug", "--log-file", "run.log",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert "****RESILIENCE MODE is active****" in result.stderr
    assert list(res.iterdir()) == []  # the directory was there before, so it stays
    log = (tmp_path / "run.log").read_text()
    assert "Integration test completed successfully" in log and "worker1: Running:" in log


def test_the_harness_knows_the_recovery_files_the_runner_writes():
    assert harness.RECOVERY_EXTENSIONS == recovery.EXTENSIONS
    assert harness.TEMP_SUFFIX == recovery.TEMP_SUFFIX


def test_only_the_workers_recovery_files_are_removed_from_the_resilience_dir(tmp_path):
    # --resilience-dir . in an application's directory: its own files must survive
    mine = {
        "app.py": "# the application",
        "input.txt": "a\n",
        "echo-initializer.txt": "notes",
        "echo-worker7.workers": "not a worker of this run",
        "initializer.workers": "x",
    }
    for name, text in mine.items():
        (tmp_path / name).write_text(text)
    leftovers = [
        "echo-initializer.local-topology",
        "echo-worker1.tcp-data.tmp",
        "other-initializer-00000000000000ff.evlog",
        "echo-worker1.evlog",
    ]
    for name in leftovers:
        (tmp_path / name).write_text("{}")
    result = integration_test(
        tmp_path, "--csv-sender", "a", "--workers", "2", "--command", ECHO,
        "--sink-expect", "1", "--validation-cmp", "--expected-csv", "L:a",
        "--resilience-dir", ".",
    )  # fmt: skip
    assert result.returncode == 0, explain(result)
    assert {p.name: p.read_text() for p in tmp_path.iterdir()} == mine


# -- exit statuses -----------------------------------------------------------------------------

VALID = ["--command", ECHO, "--validation-cmp", "--expected-csv", "a"]
CMP, CSV = "--validation-cmp", "--csv-sender"
NO_EXPECTED = (
    "either '--expected-csv', '--expected-string' or '--expected-file' must be used with "
    "'--validation-cmp'."
)
USAGE_ERRORS = [
    (["--command", ECHO], "one of the arguments --validation-cmd --validation-cmp is required"),
    ([CMP, "--expected-csv", "a"], "the following arguments are required: --command"),
    (["--command", ECHO, CMP], NO_EXPECTED),
    (
        ["--command", ECHO, "--validation-cmd", "true"],
        "'--output' is required with '--validation-cmd'",
    ),
    ([*VALID, "--sequence-sender", "(0,x]"], "range '(0,x]' has an end that is not an integer"),
    ([*VALID, "--sequence-sender", "0,10"], "range '0,10' is not in the form"),
    ([*VALID, CSV, "a", "0", ">I", "extra"], "--csv-sender takes 1 to 3 values"),
    ([*VALID, CSV, "a", "1"], "--csv-sender sends to source 1, but --sources is 1"),
    ([*VALID, CSV, "a", "0", ">f"], "--csv-sender: header format '>f' is not an unsigned integer"),
    ([*VALID, "--sink-expect", "1", "--delay", "2"], "argument --delay: not allowed with argument"),
    ([*VALID, "--sink-mode", "newlines", "--giles-mode"], "--giles-mode needs --sink-mode framed"),
    ([*VALID, "--output", "a.txt,b.txt"], "--output names 2 file(s) for 1 sink(s)"),
    ([*VALID, "--workers", "two"], "argument --workers: invalid int value: 'two'"),
    ([*VALID, "--workers", "0"], "--workers must be at least 1"),
    ([*VALID, "--sources", "0"], "--sources must be at least 1"),
    (
        [CMP, "--expected-csv", "a", "--command", "machida --application-module 'echo"],
        'argument --command: cannot split "machida --application-module \'echo": '
        "No closing quotation",
    ),
    ([CMP, "--expected-csv", "a", "--command", " "], "argument --command: the worker command"),
]


@pytest.mark.parametrize(("args", "message"), USAGE_ERRORS)
def test_command_line_mistakes_exit_2_before_anything_starts(tmp_path, args, message):
    result = integration_test(tmp_path, *args)
    assert result.returncode == 2, explain(result)
    assert result.stderr.startswith("usage: integration_test")
    assert f"integration_test: error: {message}" in result.stderr
    assert "Running:" not in result.stderr and not (tmp_path / "res").exists()


def test_an_input_file_that_is_missing_or_cut_short_fails_before_any_worker(tmp_path):
    (tmp_path / "cut.bin").write_bytes(framed(b"whole") + struct.pack(">I", 10) + b"short")
    for sender, reason in [
        ("nope.bin", "--framed-file-sender: cannot read 'nope.bin': No such file or directory"),
        ("cut.bin", "--framed-file-sender: 'cut.bin' ends inside record 2: it starts at byte 9 "
                    "and needs 14 bytes, the file has 9 left"),
    ]:  # fmt: skip
        result = integration_test(tmp_path, *VALID, "--framed-file-sender", sender)
        assert result.returncode == 1, explain(result)
        assert reason in result.stderr and "Running:" not in result.stderr


@pytest.mark.parametrize(
    ("command", "reason"),
    [
        # both runners fail to load it; whichever ends first is named
        ("machida --application-module no_such_app_module",
         "exited with status 1 before the application reported ready"),
        ("no-such-runner-command --application-module echo",
         "cannot run 'no-such-runner-command': No such file or directory"),
        (f"{ECHO} --exit-on boom", "initializer exited with status 3 while the test was running"),
    ],
)  # fmt: skip
def test_a_run_that_fails_exits_1_with_the_reason_and_the_workers_output(tmp_path, command, reason):
    result = integration_test(
        tmp_path, "--csv-sender", "ok,boom", "--workers", "2", "--command", command,
        "--sink-expect", "2", "--validation-cmp", "--expected-csv", "L:ok,L:boom",
    )  # fmt: skip
    assert result.returncode == 1, explain(result)
    assert "Encountered an error while running the test for" in result.stderr
    assert reason in result.stderr
    if "no_such_app_module" in command:
        assert "Could not load module 'no_such_app_module'" in result.stderr
    if "boom" in command:
        assert "MaybeExit.compute() raised SystemExit(3)" in result.stderr
    assert not (tmp_path / "res").exists()


def test_help_shows_each_sender_with_its_optional_source_and_header_format(tmp_path):
    result = integration_test(tmp_path, "--help")
    assert result.returncode == 0, explain(result)
    for flag, what in [("--framed-file-sender", "FILES"), ("--newline-file-sender", "FILES"),
                       ("--sequence-sender", "RANGE"), ("--csv-sender", "ITEMS")]:  # fmt: skip
        assert f"  {flag} {what} [SOURCE [HEADER_FORMAT]]" in result.stdout, result.stdout


# -- the range notation ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "values"),
    [("(0,1000]", (0, 1000)), ("[1,1000]", (0, 1000)), ("(0,1000)", (0, 999)),
     ("[5,7)", (4, 6)), ("(,]", (0, 1000)), ("[,10]", (-1, 10)), (" (3, 5] ", (3, 5))],
)  # fmt: skip
def test_ranges_follow_the_2017_notation(text, values):
    assert parse_range(text) == values


def test_a_range_outside_u64_is_refused():
    with pytest.raises(InputError, match="outside the u64 values"):
        parse_range("(0,18446744073709551616]")
