"""The runner's command line: ``machida --application-module MODULE --metrics HOST:PORT ...``.

This is the first thing a runner process does, before it imports anything or
binds a port. :func:`parse_runner_args` turns the command line into a frozen
:class:`RunnerConfig` and enforces every rule of machida.md §2 with its exact
message; :func:`main` prints the help or one ``Error:`` line (exit 1), or
hands the config to ``machida.process.run``.

Checks run in this order and the first failure wins:

1. ``-h``/``--help`` anywhere on the line: help on stdout, exit 0 (``main`` only);
2. the syntax of each word, left to right (``option --opt needs a value``,
   a bad integer, a negative ``--stop-pause``, ``--event-log-file-size`` < 1);
3. ``--application-module`` present;
4. ``--metrics`` present, then a well-formed address;
5. ``--worker-count`` at least 1;
6. the role: the initializer needs ``--data``, and ``--control`` when more
   than one worker, and cannot ``--join``; a worker must not have ``--data``,
   nor ``--worker-count`` unless it joins, and needs a ``--name`` other than
   ``initializer`` and ``--control`` or ``--join``;
7. the other addresses well formed: control, data, my-control, my-data, external, join;
9. ``--resilience-dir``: no trailing ``/``, then it must be an existing
   directory. It is checked always, with or without resilience, as machida
   did: recovery files are written there in both modes;
10. ``--exactly-once`` only with ``--run-with-resilience``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from machida.config import RUNNER_OPTIONS, RunnerConfig, runner_parser
from machida.console import error_line
from machida.errors import ConfigError
from machida.options import Option, OptionParser, UsageError, parse_host_port, strip_pony_options

INITIALIZER_NAME = "initializer"
HELP_WORDS = ("-h", "--help")
MACHIDA_FLAGS = ("application-module", "help")
SPIKE_FLAGS = ("spike-seed", "spike-drop", "spike-prob", "spike-margin")
# Not runner options: listed in the help because every application reads them.
APPLICATION_SIDE_OPTIONS = [
    Option("in", "i", metavar="HOST:PORT,...", help="source addresses, left in args for the app"),
    Option("out", "o", metavar="HOST:PORT", help="sink address, left in args for the app"),
]
RULE = "-" * 73


def parse_address(flag: str, text: str) -> tuple[str, int]:
    """``"HOST:PORT"`` → ``(host, port)``; ``[::1]:80`` is accepted for IPv6."""
    address = parse_host_port(text)
    if address is None or not address[0]:
        raise ConfigError(f"{flag} expects HOST:PORT, got {text!r}")
    return address


def wants_help(argv: list[str]) -> bool:
    """True when ``-h`` or ``--help`` is a word of the line (a value never starts with ``-``)."""
    return any(word in HELP_WORDS for word in strip_pony_options(argv[1:]))


def parse_runner_args(argv: list[str]) -> RunnerConfig:
    """Read and check the full command line (program name first); see the module docstring.

    Raises :class:`UsageError` for a malformed word and :class:`ConfigError`
    for a broken rule. A ``--help`` is not acted on here; :func:`main` does.
    """
    parsed = runner_parser().parse(argv[1:])
    values = parsed.values
    module = _required_module(values)
    metrics = _required_metrics(values)
    initializer = bool(values["cluster_initializer"])
    worker_count = _worker_count(values, initializer)
    name = _check_role(values, parsed.given, initializer, worker_count)
    # Arguments are evaluated in order, so the addresses are checked before the directory.
    config = RunnerConfig(
        application_module=module,
        metrics=metrics,
        control=_optional_address("--control", values["control"]),
        data=_optional_address("--data", values["data"]),
        my_control=_optional_address("--my-control", values["my_control"]),
        my_data=_optional_address("--my-data", values["my_data"]),
        external=_optional_address("--external", values["external"]),
        worker_count=worker_count,
        initializer=initializer,
        name=name,
        resilience_dir=_checked_resilience_dir(values["resilience_dir"]),
        resilience=bool(values["run_with_resilience"]),
        log_rotation=bool(values["log_rotation"] and values["run_with_resilience"]),
        event_log_file_size=values["event_log_file_size"],
        stop_pause_ns=values["stop_pause"],
        app_args=(argv[0], *parsed.rest),
        notices=_notices(values, parsed.given, initializer),
        cluster_secret_file=values["cluster_secret_file"],
        join=_optional_address("--join", values["join"]),
        exactly_once=bool(values["exactly_once"]),
        event_log_limit=values["event_log_limit"],
        state_off_initializer=bool(values["state_off_initializer"] and initializer),
    )
    if config.exactly_once and not config.resilience:
        raise ConfigError(
            "--exactly-once needs --run-with-resilience: output is kept in the event log "
            "until its receiver holds it."
        )
    return config


def _required_module(values: dict[str, Any]) -> str:
    if not values["application_module"]:
        raise ConfigError("You must provide Machida with --application-module")
    return values["application_module"]


def _required_metrics(values: dict[str, Any]) -> tuple[str, int]:
    if not values["metrics"]:
        raise ConfigError("You must specify a metrics address via --metrics/-m.")
    return parse_address("--metrics", values["metrics"])


def _optional_address(flag: str, text: str | None) -> tuple[str, int] | None:
    return None if text is None else parse_address(flag, text)


def _worker_count(values: dict[str, Any], initializer: bool) -> int:
    """The cluster size: 1 unless given on the initializer; on a joiner, how many join
    together (1 unless given); 0 (unknown yet) on any other worker."""
    count = values["worker_count"]
    if count is not None and count < 1:
        raise ConfigError("--worker-count must be at least 1.")
    if not initializer and not values["join"]:
        return 0
    return 1 if count is None else count


def _check_role(
    values: dict[str, Any], given: set[str], initializer: bool, worker_count: int
) -> str:
    """Apply the initializer's or the worker's rules; returns this process's name."""
    if initializer:
        if values["join"]:
            raise ConfigError("The cluster initializer cannot --join a cluster: it forms one.")
        if not values["data"]:
            raise ConfigError(
                "Cluster initializer needs its data channel address to be specified via --data."
            )
        if worker_count > 1 and not values["control"]:
            raise ConfigError(
                "Cluster initializer needs its control channel address to be specified"
                " via --control when --worker-count is more than 1."
            )
        return INITIALIZER_NAME
    return _worker_name(values, given)


def _worker_name(values: dict[str, Any], given: set[str]) -> str:
    if "worker_count" in given and not values["join"]:
        raise ConfigError("Only supply --worker-count to cluster initializer.")
    if values["data"] is not None:
        raise ConfigError("Only supply --data to cluster initializer.")
    name = values["name"]
    if not name:
        raise ConfigError("You must specify a worker name via --name/-n.")
    if name == INITIALIZER_NAME:
        raise ConfigError(
            "The name 'initializer' is reserved for the cluster initializer;"
            " give this worker another --name, or add --cluster-initializer."
        )
    if not values["control"] and not values["join"]:
        raise ConfigError(
            "A worker needs the initializer's control channel address via --control/-c "
            "(or a running worker's, to join the cluster, via --join/-j)."
        )
    return name


def _checked_resilience_dir(path: str) -> str:
    if path.endswith("/"):
        raise ConfigError("--resilience-dir must not end in /")
    if not os.path.isdir(path):
        raise ConfigError(f"Resilience directory: {path} doesn't exist")
    return path


def _notices(values: dict[str, Any], given: set[str], initializer: bool) -> tuple[str, ...]:
    """One ``WARNING:`` line per option that is accepted but has no effect."""
    notices = []
    if initializer and values["name"] not in (None, INITIALIZER_NAME):
        notices.append(
            f"WARNING: --name {values['name']} ignored: the cluster initializer"
            f" is always named {INITIALIZER_NAME}."
        )
    if values["log_rotation"] and not values["run_with_resilience"]:
        notices.append("WARNING: --log-rotation ignored: it needs --run-with-resilience.")
    if "event_log_limit" in given and not values["run_with_resilience"]:
        notices.append("WARNING: --event-log-limit ignored: it needs --run-with-resilience.")
    if values["state_off_initializer"] and not initializer:
        notices.append(
            "WARNING: --state-off-initializer ignored: the cluster initializer places the keys."
        )
    if "phone_home" in given:
        notices.append("WARNING: --phone-home ignored: Dagon orchestration is not supported.")
    for flag in SPIKE_FLAGS:
        if flag.replace("-", "_") in given:
            notices.append(f"WARNING: --{flag} ignored: this runner has no fault injection.")
    return tuple(notices)


def help_text() -> str:
    """Two blocks, as machida printed: its own option, then Wallaroo's."""
    by_name = {option.long: option for option in RUNNER_OPTIONS}
    machida = [by_name[name] for name in MACHIDA_FLAGS]
    wallaroo = APPLICATION_SIDE_OPTIONS + [o for o in RUNNER_OPTIONS if o.long not in MACHIDA_FLAGS]
    lines = [
        "Usage: machida --application-module MODULE --metrics HOST:PORT [OPTIONS] [APP ARGS]",
        "",
        *_block("Machida options:", machida),
        "",
        *_block("Wallaroo options:", wallaroo),
        "",
        "Pony runtime options (--ponythreads, --ponynoblock, ...) are accepted and ignored.",
        "Options not listed here, --in and --out among them, reach application_setup(args).",
    ]
    return "\n".join(lines) + "\n"


def _block(title: str, options: list[Option]) -> list[str]:
    return [RULE, title, RULE, *OptionParser(options).help_lines()]


def main(argv: list[str] | None = None) -> int:
    """Run the runner; ``argv`` is the full command line, program name first (default sys.argv)."""
    argv = list(sys.argv if argv is None else argv)
    if wants_help(argv):
        sys.stdout.write(help_text())
        return 0
    try:
        config = parse_runner_args(argv)
    except (UsageError, ConfigError) as err:
        print(error_line(err), file=sys.stderr)
        return 1
    import machida.process  # loaded only now: --help and errors stay fast

    return machida.process.run(config)
