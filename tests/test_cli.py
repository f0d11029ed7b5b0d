"""The runner's command line (machida.md §2, scenarios 47-49).

Unit tests call :func:`parse_runner_args` for every option form, the
application's ``args``, the notices and each error's exact message; the
process tests run ``sys.executable -m machida`` and show that an error or
``--help`` ends the process with the right status before anything is
imported or bound.
"""

from __future__ import annotations

import ast
import os
import socket
import subprocess
import sys
import types
from pathlib import Path

import pytest

from machida.cli import ConfigError, RunnerConfig, error_line, help_text, main, parse_runner_args
from machida.config import RUNNER_OPTIONS, app_args
from machida.errors import ApplicationError, MachidaError
from machida.options import UsageError

ROOT = Path(__file__).resolve().parent.parent
PROCESS_TIMEOUT = 30.0
METRICS = ["--metrics", "127.0.0.1:5001"]
COMMON = ["machida", "--application-module", "app", *METRICS]
INITIALIZER = [*COMMON, "--cluster-initializer", "--data", "127.0.0.1:6001"]
WORKER = [*COMMON, "--name", "worker-2", "--control", "127.0.0.1:6000"]


def test_initializer_defaults():
    config = parse_runner_args(INITIALIZER)
    assert config == RunnerConfig(
        application_module="app",
        metrics=("127.0.0.1", 5001),
        control=None,
        data=("127.0.0.1", 6001),
        my_control=None,
        my_data=None,
        external=None,
        worker_count=1,
        initializer=True,
        name="initializer",
        resilience_dir="/tmp",
        resilience=False,
        log_rotation=False,
        event_log_file_size=None,
        stop_pause_ns=2_000_000_000,
        app_args=("machida",),
        notices=(),
    )


def test_worker_defaults():
    config = parse_runner_args(WORKER)
    assert config.initializer is False
    assert config.name == "worker-2"
    assert config.control == ("127.0.0.1", 6000)
    assert config.data is None
    assert config.worker_count == 0
    # no wildcard: the process listens on the address that reaches the initializer
    assert (config.my_control, config.my_data) == (None, None)
    assert config.cluster_secret_file is None


def test_a_joiner_needs_only_an_address_of_the_cluster_and_counts_one_by_default():
    joiner = [*COMMON, "--name", "w3", "--join", "127.0.0.1:6000"]
    config = parse_runner_args(joiner)
    assert (config.join, config.control, config.worker_count) == (("127.0.0.1", 6000), None, 1)
    assert not config.initializer
    assert parse_runner_args([*joiner, "--worker-count", "4"]).worker_count == 4


def test_config_is_frozen():
    config = parse_runner_args(WORKER)
    with pytest.raises(AttributeError):
        config.name = "other"  # type: ignore[misc]


ADDRESS_FLAGS = [
    ("metrics", "m", "metrics"),
    ("control", "c", "control"),
    ("data", "d", "data"),
    ("my-control", "x", "my_control"),
    ("my-data", "y", "my_data"),
    ("external", "e", "external"),
]


def _forms(long: str, short: str | None, value: str) -> list[list[str]]:
    forms = [[f"--{long}", value], [f"--{long}={value}"]]
    if short:
        forms += [[f"-{short}", value], [f"-{short}{value}"]]
    return forms


@pytest.mark.parametrize(
    "words,field",
    [
        (form, field)
        for long, short, field in ADDRESS_FLAGS
        for form in _forms(long, short, "10.1.2.3:7100")
    ],
)
def test_address_flags_in_every_form(words, field):
    config = parse_runner_args([*INITIALIZER, *words])
    assert getattr(config, field) == ("10.1.2.3", 7100)
    assert config.app_args == ("machida",)


@pytest.mark.parametrize(
    "words,field,expected",
    [
        (["--stop-pause", "2_000_000_000"], "stop_pause_ns", 2_000_000_000),
        (["--stop-pause=1_000"], "stop_pause_ns", 1000),
        (["-u", "0x10"], "stop_pause_ns", 16),
        (["-u0b101"], "stop_pause_ns", 5),
        (["--stop-pause=0"], "stop_pause_ns", 0),
        (["--event-log-file-size", "1_000_000"], "event_log_file_size", 1_000_000),
        (["-l4096"], "event_log_file_size", 4096),
        (["--worker-count", "1"], "worker_count", 1),
        (["--worker-count=0x3", "-c", "h:1"], "worker_count", 3),
        (["-w", "2", "-c", "h:1"], "worker_count", 2),
        (["-w1_0", "-c", "h:1"], "worker_count", 10),
        (["--name", "ignored"], "name", "initializer"),
        (["--file", "x.txt"], "app_args", ("machida",)),
    ],
)
def test_value_flags_in_every_form(words, field, expected):
    assert getattr(parse_runner_args([*INITIALIZER, *words]), field) == expected


@pytest.mark.parametrize("words", [["-n", "w7"], ["-nw7"], ["--name=w7"], ["--name", "w7"]])
def test_worker_name_forms(words):
    config = parse_runner_args([*COMMON, "-c", "h:1", *words])
    assert config.name == "w7"


@pytest.mark.parametrize("flag", ["--cluster-initializer", "-t"])
def test_initializer_flag_forms(flag):
    assert parse_runner_args([*COMMON, flag, "-d", "h:1"]).initializer is True


def test_resilience_flags(tmp_path):
    config = parse_runner_args(
        [*INITIALIZER, "--run-with-resilience", "--log-rotation", "-r", str(tmp_path)]
    )
    assert (config.resilience, config.log_rotation) == (True, True)
    assert config.resilience_dir == str(tmp_path)
    assert config.notices == ()


@pytest.mark.parametrize(
    "pony",
    [
        ["--ponythreads=1"],
        ["--ponythreads", "4"],
        ["--ponynoblock"],
        ["--ponyminthreads", "2"],
        ["--ponycdinterval=100"],
        ["--ponygcinitial", "14"],
        ["--ponygcfactor", "2.0"],
        ["--ponysuspendthreshold", "5"],
        ["--ponypin"],
    ],
)
def test_pony_options_are_removed_in_every_form(pony):
    config = parse_runner_args(["machida", *pony, *INITIALIZER[1:], *pony, "--foo", "bar"])
    assert config.app_args == ("machida", "--foo", "bar")


def test_scenario_47_app_args():
    argv = [
        "/usr/bin/machida",
        "--application-module",
        "recorder",
        "--ponythreads=1",
        "--ponynoblock",
        "--metrics",
        "127.0.0.1:5001",
        "--control",
        "127.0.0.1:6000",
        "--in",
        "127.0.0.1:7010",
        "--out",
        "127.0.0.1:7002",
        "--foo",
        "bar",
        "--name",
        "worker-2",
    ]
    config = parse_runner_args(argv)
    assert config.app_args[0] == "/usr/bin/machida"
    expected = ["--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002", "--foo", "bar"]
    assert list(config.app_args[1:]) == expected
    assert list(config.app_args) == app_args(argv)


def test_every_runner_option_in_every_form_is_removed_and_the_rest_keeps_its_order(tmp_path):
    argv = [
        "prog",
        "-i",
        "127.0.0.1:7010",
        "--application-module=app",
        "-m127.0.0.1:5001",
        "--out=h:7002",
        "-t",
        "--data",
        "h:6001",
        "-ch:6000",
        "--my-control=h:1",
        "-y",
        "h:2",
        "-eh:3",
        "-w2",
        "--name",
        "x",
        "positional",
        "-r",
        str(tmp_path),
        "--run-with-resilience",
        "--log-rotation",
        "-l100",
        "--stop-pause=5",
        "-f",
        "file",
        "--phone-home=h:4",
        "--spike-seed",
        "1",
        "--spike-drop",
        "--spike-prob=0.5",
        "--spike-margin",
        "3",
        "--foo=bar",
        "-z",
        "--ponynoblock",
    ]
    config = parse_runner_args(argv)
    assert config.app_args == (
        "prog",
        "-i",
        "127.0.0.1:7010",
        "--out=h:7002",
        "positional",
        "--foo=bar",
        "-z",
    )


def test_notices_for_ignored_options():
    config = parse_runner_args(
        [
            *INITIALIZER,
            "--name",
            "boss",
            "--log-rotation",
            "-p",
            "h:1",
            "--spike-seed=1",
            "--spike-drop",
            "--spike-prob",
            "0.1",
            "--spike-margin",
            "2",
        ]
    )
    assert config.name == "initializer"
    assert config.log_rotation is False
    assert config.notices == (
        "WARNING: --name boss ignored: the cluster initializer is always named initializer.",
        "WARNING: --log-rotation ignored: it needs --run-with-resilience.",
        "WARNING: --phone-home ignored: Dagon orchestration is not supported.",
        "WARNING: --spike-seed ignored: this runner has no fault injection.",
        "WARNING: --spike-drop ignored: this runner has no fault injection.",
        "WARNING: --spike-prob ignored: this runner has no fault injection.",
        "WARNING: --spike-margin ignored: this runner has no fault injection.",
    )


def test_no_notice_for_the_initializers_own_name_or_for_file():
    config = parse_runner_args([*INITIALIZER, "-n", "initializer", "--file", "f"])
    assert config.notices == ()


NO_DIR = "/nonexistent/machida-cli-test"
# Scenario 49 and the other rules of machida.md §2: (extra words, exact stderr line).
ERRORS = [
    (
        ["machida", *METRICS, "-t", "-d", "h:1"],
        "Error: You must provide Machida with --application-module",
    ),
    (
        ["machida", "--application-module", "app", "-t", "-d", "h:1"],
        "Error: You must specify a metrics address via --metrics/-m.",
    ),
    (
        [*COMMON, "-t"],
        "Error: Cluster initializer needs its data channel address to be specified via --data.",
    ),
    ([*WORKER, "--data", "h:1"], "Error: Only supply --data to cluster initializer."),
    ([*INITIALIZER, "--worker-count", "0"], "Error: --worker-count must be at least 1."),
    ([*INITIALIZER, "--worker-count=-2"], "Error: --worker-count must be at least 1."),
    ([*WORKER, "-w", "2"], "Error: Only supply --worker-count to cluster initializer."),
    ([*COMMON, "-c", "h:1"], "Error: You must specify a worker name via --name/-n."),
    (
        [*COMMON, "-c", "h:1", "--name", "initializer"],
        "Error: The name 'initializer' is reserved for the cluster initializer;"
        " give this worker another --name, or add --cluster-initializer.",
    ),
    (
        [*COMMON, "-n", "w2"],
        "Error: A worker needs the initializer's control channel address via --control/-c "
        "(or a running worker's, to join the cluster, via --join/-j).",
    ),
    (
        [*INITIALIZER, "-w", "2"],
        "Error: Cluster initializer needs its control channel address to be specified"
        " via --control when --worker-count is more than 1.",
    ),
    ([*INITIALIZER, "-r", NO_DIR], f"Error: Resilience directory: {NO_DIR} doesn't exist"),
    ([*INITIALIZER, "--resilience-dir", "/tmp/"], "Error: --resilience-dir must not end in /"),
    (
        [*INITIALIZER, "--join", "h:1"],
        "Error: The cluster initializer cannot --join a cluster: it forms one.",
    ),
    ([*WORKER, "-w", "2"], "Error: Only supply --worker-count to cluster initializer."),
    ([*COMMON, "-n", "w3", "--join", "h"], "Error: --join expects HOST:PORT, got 'h'"),
    ([*INITIALIZER, "--name", "-x"], "Error: option --name needs a value"),
    (
        ["machida", "--application-module", "--metrics", "h:1"],
        "Error: option --application-module needs a value",
    ),
    ([*INITIALIZER, "-m"], "Error: option --metrics needs a value"),
    ([*INITIALIZER, "--stop-pause=-1"], "Error: option --stop-pause must be at least 0, got '-1'"),
    ([*INITIALIZER, "-w", "two"], "Error: option --worker-count needs an integer, got 'two'"),
    ([*INITIALIZER, "-t=yes"], "Error: option --cluster-initializer takes no value"),
    ([*INITIALIZER, "-m", "localhost"], "Error: --metrics expects HOST:PORT, got 'localhost'"),
    ([*INITIALIZER, "-e", "h:70000"], "Error: --external expects HOST:PORT, got 'h:70000'"),
    ([*WORKER, "-c", ":6000"], "Error: --control expects HOST:PORT, got ':6000'"),
    ([*INITIALIZER, "--my-data=h:x"], "Error: --my-data expects HOST:PORT, got 'h:x'"),
    ([*INITIALIZER, "-e", "h:\u00b2"], "Error: --external expects HOST:PORT, got 'h:\u00b2'"),
    ([*WORKER, "-c", "[]:6000"], "Error: --control expects HOST:PORT, got '[]:6000'"),
]


@pytest.mark.parametrize("argv,line", ERRORS, ids=[line for _, line in ERRORS])
def test_errors_have_their_exact_message(argv, line):
    with pytest.raises((ConfigError, UsageError)) as caught:
        parse_runner_args(argv)
    assert error_line(caught.value) == line


@pytest.mark.parametrize(
    "argv,line",
    [
        (["machida", "-t"], "Error: You must provide Machida with --application-module"),
        (
            [*COMMON[:3], "--join", "h:1"],
            "Error: You must specify a metrics address via --metrics/-m.",
        ),
        ([*COMMON, "-w", "0", "--join", "h:1"], "Error: --worker-count must be at least 1."),
        ([*COMMON, "-w", "0"], "Error: --worker-count must be at least 1."),
        ([*COMMON, "-d", "h:1", "-r", NO_DIR], "Error: Only supply --data to cluster initializer."),
        ([*COMMON, "-r", "/tmp/"], "Error: You must specify a worker name via --name/-n."),
        ([*WORKER, "-e", "bad", "-r", "/tmp/"], "Error: --external expects HOST:PORT, got 'bad'"),
        ([*WORKER, "-r", NO_DIR + "/"], "Error: --resilience-dir must not end in /"),
    ],
)
def test_order_of_checks(argv, line):
    with pytest.raises((ConfigError, UsageError)) as caught:
        parse_runner_args(argv)
    assert error_line(caught.value) == line


def test_resilience_dir_must_be_a_directory(tmp_path):
    plain_file = tmp_path / "file"
    plain_file.write_text("")
    with pytest.raises(ConfigError, match="doesn't exist"):
        parse_runner_args([*INITIALIZER, "-r", str(plain_file)])


def test_error_line_adds_the_prefix_that_no_message_carries():
    assert error_line(ConfigError("x")) == "Error: x"
    assert error_line("the initializer refused") == "Error: the initializer refused"
    assert error_line(UsageError("option --m needs a value")) == "Error: option --m needs a value"
    traceback = "Traceback (most recent call last):\n  ...\nCould not load module 'm'"
    assert error_line(ApplicationError(traceback, verbatim=True)) == traceback


def _leading_text(node: ast.expr) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr) and node.values:
        return _leading_text(node.values[0])
    return ""


def test_no_error_message_of_the_runner_or_flink_starts_with_the_prefix():
    """error_line adds "Error: "; an exception whose message carried it would print it twice."""
    import machida_flink.files  # noqa: F401  (its RunLocked is one of them)

    errors = {cls.__name__ for cls in _subclasses(MachidaError)}
    assert {"ConfigError", "RecoveryError", "RunLocked"} <= errors
    for package in ("machida", "machida_flink"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Call) and getattr(node.func, "id", "") in errors:
                    text = _leading_text(node.args[0]) if node.args else ""
                    assert not text.startswith("Error: "), f"{path}:{node.lineno}"


def _subclasses(cls: type) -> list[type]:
    return [cls, *(sub for child in cls.__subclasses__() for sub in _subclasses(child))]


def test_help_lists_every_flag_in_two_blocks():
    text = help_text()
    machida_block, wallaroo_block = text.split("Wallaroo options:")
    assert "--application-module" in machida_block
    assert "Machida options:" in machida_block
    for option in RUNNER_OPTIONS:
        if option.long not in ("application-module", "help"):
            assert f"--{option.long}" in wallaroo_block
    for flag in ("--in", "--out", "--stop-pause", "--run-with-resilience"):
        assert flag in wallaroo_block
    assert "--stop-world" not in text


@pytest.fixture
def fake_worker(monkeypatch):
    """A stand-in ``machida.process`` whose ``run`` records its config and returns 7."""
    calls: list[RunnerConfig] = []
    module = types.ModuleType("machida.process")
    module.run = lambda config: calls.append(config) or 7  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "machida.process", module)
    monkeypatch.setattr("machida.process", module, raising=False)
    return calls


def test_main_hands_the_config_to_the_worker(fake_worker):
    assert main([*WORKER, "--in", "h:1"]) == 7
    assert [c.app_args for c in fake_worker] == [("machida", "--in", "h:1")]


def test_main_help_starts_nothing(fake_worker, capsys):
    assert main([*WORKER, "-h"]) == 0
    out, err = capsys.readouterr()
    assert out == help_text()
    assert err == ""
    assert fake_worker == []


def test_main_help_wins_over_errors(fake_worker, capsys):
    assert main(["machida", "--help", "--worker-count", "0"]) == 0
    assert "Wallaroo options:" in capsys.readouterr().out


def test_main_error_is_one_line_and_starts_nothing(fake_worker, capsys):
    assert main([*COMMON, "-t"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == (
        "Error: Cluster initializer needs its data channel address to be specified via --data.\n"
    )
    assert fake_worker == []


def test_main_reads_sys_argv_by_default(fake_worker, monkeypatch):
    monkeypatch.setattr(sys, "argv", [*WORKER, "--foo"])
    assert main() == 7
    assert fake_worker[0].app_args == ("machida", "--foo")


# ---- real processes -------------------------------------------------------

MARKER_APP = """
import os
open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "imported"), "w").close()
"""


def free_ports(count: int) -> list[int]:
    """Loopback ports nobody is bound to (all bound at once, so they differ, then released)."""
    socks = [socket.socket() for _ in range(count)]
    try:
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def assert_bindable(ports: list[int]) -> None:
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def run_machida(words: list[str], cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "machida", *words],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=PROCESS_TIMEOUT,
    )


@pytest.fixture
def marker_dir(tmp_path):
    """A directory holding ``marker_app``, which leaves a file named ``imported`` when imported."""
    (tmp_path / "marker_app.py").write_text(MARKER_APP)
    return tmp_path


def _as_process_words(argv: list[str], ports: list[int]) -> list[str]:
    """The error case's words with the marker module, plus ``--in``/``--out`` on free ports."""
    words = ["marker_app" if word == "app" else word for word in argv[1:]]
    return [*words, "--in", f"127.0.0.1:{ports[0]}", "--out", f"127.0.0.1:{ports[1]}"]


@pytest.mark.parametrize("argv,line", ERRORS, ids=[line for _, line in ERRORS])
def test_process_exits_1_with_the_line_before_importing_or_binding(argv, line, marker_dir):
    ports = free_ports(2)
    result = run_machida(_as_process_words(argv, ports), marker_dir)
    assert (result.returncode, result.stdout, result.stderr) == (1, "", line + "\n")
    assert not (marker_dir / "imported").exists()
    assert_bindable(ports)


def test_process_help_exits_0_and_binds_nothing(marker_dir):
    ports = free_ports(3)
    words = ["--application-module", "marker_app", *METRICS, "-t", "-d", f"127.0.0.1:{ports[0]}"]
    result = run_machida([*words, "--in", f"127.0.0.1:{ports[1]}", "--help"], marker_dir)
    assert (result.returncode, result.stderr) == (0, "")
    for flag in ("--stop-pause", "--out", "--run-with-resilience", "--application-module"):
        assert flag in result.stdout
    assert "Machida options:" in result.stdout and "Wallaroo options:" in result.stdout
    assert not (marker_dir / "imported").exists()
    assert_bindable(ports)


def test_console_script_is_installed(tmp_path):
    script = os.path.join(os.path.dirname(sys.executable), "machida")
    result = subprocess.run(
        [script, "-h"], cwd=tmp_path, capture_output=True, text=True, timeout=PROCESS_TIMEOUT
    )
    assert (result.returncode, result.stdout) == (0, help_text())
