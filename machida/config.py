"""machida's own command-line options, and the argument list an application sees.

The table below is machida.md §2: every option the runner consumes, in the
spec's order, with the help text ``machida --help`` shows. Whatever is not in
it (``--in``, ``--out``, an application's own flags) is left, in its original
order, for ``application_setup(args)``; the Pony runtime's options are removed
first, as the Pony runtime did before machida saw its argv. The rules that
need more than one option at a time live in :mod:`machida.cli`, which turns a
command line into the checked :class:`RunnerConfig` defined here.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from machida.options import Option, OptionParser

_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}

DEFAULT_STOP_PAUSE_NS = 2_000_000_000
# --event-log-limit's default. Past it a worker's event log is compacted to what recovery needs
# (every owned key's snapshot and the backlogs). At sequence_window's full rate a resilient
# worker logs some 10-20 MB/s (more with --exactly-once, which logs its output too), so it
# compacts every few seconds at most, each a millisecond or two for small states; and 64 MiB
# fits on any disk a worker runs on.
DEFAULT_EVENT_LOG_LIMIT = 64 * 1024 * 1024

RUNNER_OPTIONS = [
    Option("application-module", metavar="MODULE", help="application module to import (required)"),
    Option(
        "metrics",
        "m",
        metavar="HOST:PORT",
        help="where stats records go (required on every process)",
    ),
    Option(
        "control",
        "c",
        metavar="HOST:PORT",
        help="initializer: listen here; worker: connect here",
    ),
    Option("data", "d", metavar="HOST:PORT", help="initializer's data channel (initializer only)"),
    Option(
        "my-control",
        "x",
        metavar="HOST:PORT",
        help="a worker's control listener (default: the address that reaches --control or "
        "--join, port 0)",
    ),
    Option(
        "my-data",
        "y",
        metavar="HOST:PORT",
        help="a worker's data listener (default: the address that reaches --control or "
        "--join, port 0)",
    ),
    Option("external", "e", metavar="HOST:PORT", help="external channel listener"),
    Option(
        "worker-count",
        "w",
        kind="int",
        metavar="N",
        help="cluster size, initializer included (default 1); with --join, how many workers "
        "join together",
    ),
    Option(
        "cluster-initializer",
        "t",
        kind="flag",
        default=False,
        help="this process is the cluster initializer",
    ),
    Option(
        "state-off-initializer",
        kind="flag",
        default=False,
        help="place no key on the initializer while the cluster has other workers: it runs "
        "the sources, the others the states (effective on the initializer, when a cluster forms)",
    ),
    Option("name", "n", metavar="NAME", help="worker name (required on workers)"),
    Option(
        "resilience-dir",
        "r",
        default="/tmp",
        metavar="DIR",
        help="recovery files; must exist, no trailing / (default /tmp)",
    ),
    Option(
        "run-with-resilience",
        kind="flag",
        default=False,
        help="turn on resilience: log, replay and snapshot state",
    ),
    Option(
        "exactly-once",
        kind="flag",
        default=False,
        help="number the output and keep it until the receiver holds it: with a receiver "
        "started with --exactly-once, each output arrives once (needs --run-with-resilience)",
    ),
    Option(
        "event-log-limit",
        kind="int",
        default=DEFAULT_EVENT_LOG_LIMIT,
        minimum=4096,
        metavar="BYTES",
        help="compact the event log past this size (default 67_108_864; with "
        "--log-rotation and no --event-log-file-size, rotate instead)",
    ),
    Option(
        "log-rotation",
        kind="flag",
        default=False,
        help="enable event-log rotation (needs --run-with-resilience)",
    ),
    Option(
        "event-log-file-size",
        "l",
        kind="int",
        minimum=1,
        metavar="BYTES",
        help="rotate the event log past this size",
    ),
    Option(
        "stop-pause",
        "u",
        kind="int",
        default=DEFAULT_STOP_PAUSE_NS,
        minimum=0,
        metavar="NS",
        help="pause for a log rotation (default 2_000_000_000)",
    ),
    Option(
        "cluster-secret-file",
        metavar="FILE",
        help="the secret every worker proves to the others (default: "
        "~/.config/machida/cluster-secret, created on first use)",
    ),
    Option(
        "join",
        "j",
        metavar="HOST:PORT",
        help="join a running cluster through any worker's control address (autoscale)",
    ),
    Option("file", "f", metavar="FILE", help="accepted and ignored"),
    Option("phone-home", "p", metavar="HOST:PORT", help="accepted and ignored"),
    Option("spike-seed", metavar="N", help="accepted and ignored (fault injection)"),
    Option("spike-drop", kind="flag", default=False, help="accepted and ignored (fault injection)"),
    Option("spike-prob", metavar="P", help="accepted and ignored (fault injection)"),
    Option("spike-margin", metavar="N", help="accepted and ignored (fault injection)"),
    Option("help", "h", kind="flag", default=False, help="print this help and exit"),
]


def runner_parser() -> OptionParser:
    return OptionParser(RUNNER_OPTIONS, keep_unknown=True)


def app_args(argv: list[str]) -> list[str]:
    """The ``args`` list for ``application_setup``: program name, then what machida leaves.

    ``argv`` is the full command line, program name first.
    """
    parsed = runner_parser().parse(argv[1:])
    return [argv[0], *parsed.rest]


@dataclass(frozen=True, **_SLOTS)
class RunnerConfig:
    """Everything the command line says, checked; addresses are ``(host, port)``.

    ``control`` is None only on an initializer of one worker (it then listens
    on an ephemeral port). ``data`` is None on every worker. ``worker_count``
    is the cluster size on the initializer and 0 on a worker, which learns it
    from the initializer. ``log_rotation`` is the effective setting: off
    without ``resilience``. ``notices`` are ``WARNING:`` lines for stderr at
    start, one per ignored option.
    """

    application_module: str
    metrics: tuple[str, int]
    control: tuple[str, int] | None
    data: tuple[str, int] | None
    my_control: tuple[str, int] | None
    my_data: tuple[str, int] | None
    external: tuple[str, int] | None
    worker_count: int
    initializer: bool
    name: str
    resilience_dir: str
    resilience: bool
    log_rotation: bool
    event_log_file_size: int | None
    stop_pause_ns: int
    app_args: tuple[str, ...]
    notices: tuple[str, ...]
    cluster_secret_file: str | None = None
    join: tuple[str, int] | None = None  # --join: a running worker's control address
    exactly_once: bool = False  # --exactly-once (only with resilience)
    event_log_limit: int = DEFAULT_EVENT_LOG_LIMIT
    state_off_initializer: bool = False  # --state-off-initializer (the initializer's decides)
