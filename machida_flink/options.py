"""machida-flink's command line: machida's flags that make sense on Flink, and Flink's own.

The application's own arguments (``--in``, ``--out`` and anything else not
listed here) reach ``application_setup(args)`` in their original order, as
with machida. machida's cluster flags are accepted so that a ``machida``
command line works unchanged; each prints one ``WARNING:`` line saying why it
has no effect. Parsing is pure: a list of words in, a frozen
:class:`FlinkConfig` or a :class:`~machida.options.UsageError` /
:class:`ConfigError` out.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from machida.errors import ConfigError
from machida.options import Option, OptionParser, parse_host_port

# The maximum parallelism is the number of Flink's key groups, the unit in which keyed
# state moves between subtasks: a run's state can be restored at any parallelism up to it,
# never above, and it cannot change for the life of a run's state (its checkpoints and
# savepoints). 128 is Flink's own default for jobs of up to 85 subtasks; a key group costs a
# few bytes in every checkpoint, so a larger number buys nothing these applications (a
# handful to a few thousand keys) need.
MAX_PARALLELISM = 128

STATE_BACKENDS = ("hashmap", "rocksdb")
DEFAULT_CHECKPOINT_MS = 1000

OWN_OPTIONS = [
    Option("application-module", metavar="MODULE", help="application module to import (required)"),
    Option("external", "e", metavar="HOST:PORT", help="external channel (cluster_shutdown, print)"),
    Option(
        "resilience-dir",
        "r",
        default="/tmp",
        metavar="DIR",
        help="the ingress's recorded input and Flink's checkpoints (default /tmp)",
    ),
    Option(
        "name",
        "n",
        metavar="NAME",
        help="name in this process's lines and files (default initializer)",
    ),
    Option("metrics", "m", metavar="HOST:PORT", help="accepted; Flink reports its own metrics"),
    Option(
        "parallelism",
        kind="int",
        default=1,
        minimum=1,
        metavar="N",
        help="default 1, or a savepoint's",
    ),
    Option(
        "from-savepoint",
        metavar="PATH",
        help="start from a savepoint taken by external_sender -t savepoint",
    ),
    Option(
        "checkpoint-interval",
        kind="int",
        default=DEFAULT_CHECKPOINT_MS,
        minimum=10,
        metavar="MS",
        help=f"checkpoint every MS milliseconds (default {DEFAULT_CHECKPOINT_MS})",
    ),
    Option(
        "state-backend",
        default="hashmap",
        metavar="hashmap|rocksdb",
        help="where Flink keeps keyed state (default hashmap)",
    ),
    Option(
        "jobmanager",
        metavar="HOST:PORT",
        help="submit to this Flink cluster's REST address instead of an embedded MiniCluster",
    ),
    Option(
        "ingress",
        default="127.0.0.1:0",
        metavar="HOST:PORT",
        help="where TaskManagers read the recorded input (default 127.0.0.1:0)",
    ),
    Option("help", "h", kind="flag", default=False, help="print this help and exit"),
]

# machida's own flags: accepted, with the reason they do nothing here.
MACHIDA_ONLY = {
    "control": ("c", "str", "Flink's JobManager coordinates the job"),
    "data": ("d", "str", "Flink moves data between its tasks"),
    "my-control": ("x", "str", "Flink's JobManager coordinates the job"),
    "my-data": ("y", "str", "Flink moves data between its tasks"),
    "worker-count": ("w", "int", "use --parallelism"),
    "cluster-initializer": ("t", "flag", "there is one machida-flink process"),
    "run-with-resilience": (None, "flag", "Flink always checkpoints state with the input offsets"),
    "log-rotation": (None, "flag", "state lives in Flink checkpoints, not event logs"),
    "event-log-file-size": ("l", "int", "state lives in Flink checkpoints, not event logs"),
    "stop-pause": ("u", "int", "state lives in Flink checkpoints, not event logs"),
    "file": ("f", "str", "not used"),
    "phone-home": ("p", "str", "Dagon orchestration is not supported"),
    "spike-seed": (None, "str", "this runner has no fault injection"),
    "spike-drop": (None, "flag", "this runner has no fault injection"),
    "spike-prob": (None, "str", "this runner has no fault injection"),
    "spike-margin": (None, "str", "this runner has no fault injection"),
}
SILENT = {"cluster-initializer", "worker-count", "control", "data", "run-with-resilience"}


@dataclass(frozen=True)
class FlinkConfig:
    application_module: str
    external: tuple[str, int] | None
    resilience_dir: str
    name: str
    parallelism: int
    parallelism_given: bool
    from_savepoint: str | None
    checkpoint_interval_ms: int
    state_backend: str
    jobmanager: tuple[str, int] | None
    ingress: tuple[str, int]
    app_args: tuple
    notices: tuple


def all_options() -> list[Option]:
    extra = [
        Option(
            long, short, kind=kind, metavar="" if kind == "flag" else "V", help=f"ignored: {why}"
        )
        for long, (short, kind, why) in MACHIDA_ONLY.items()
    ]
    return [*OWN_OPTIONS, *extra, Option("join", "j", metavar="HOST:PORT")]


def parser() -> OptionParser:
    return OptionParser(all_options(), keep_unknown=True)


def _address(flag: str, text: str | None) -> tuple[str, int] | None:
    if text is None:
        return None
    address = parse_host_port(text)
    if address is None or not address[0]:
        raise ConfigError(f"{flag} expects HOST:PORT, got {text!r}")
    return address


def parse(argv: list[str]) -> FlinkConfig:
    """Read the full command line (program name first)."""
    parsed = parser().parse(argv[1:])
    values = parsed.values
    if not values["application_module"]:
        raise ConfigError("You must provide machida-flink with --application-module")
    if values["state_backend"] not in STATE_BACKENDS:
        raise ConfigError(
            f"--state-backend must be hashmap or rocksdb, got {values['state_backend']!r}"
        )
    if "join" in parsed.given:
        raise ConfigError(
            "--join (autoscale) is not supported; rescale a running job with "
            "external_sender -t rescale -m N."
        )
    if values["parallelism"] > MAX_PARALLELISM:
        raise ConfigError(f"--parallelism must be at most {MAX_PARALLELISM} (the max "
                          f"parallelism), got {values['parallelism']}")  # fmt: skip
    name = values["name"] or "initializer"
    if "/" in name or "\0" in name:
        raise ConfigError(f"--name {name!r} must not contain '/': it is part of file names")
    directory = values["resilience_dir"]
    if directory.endswith("/") and directory != "/":
        raise ConfigError("--resilience-dir must not end in /")
    if not os.path.isdir(directory):
        raise ConfigError(f"Resilience directory: {directory} doesn't exist")
    notices = [
        f"WARNING: --{long} ignored on Flink: {MACHIDA_ONLY[long][2]}."
        for long in MACHIDA_ONLY
        if long.replace("-", "_") in parsed.given and long not in SILENT
    ]
    if "metrics" in parsed.given:
        notices.append("WARNING: --metrics ignored on Flink: see Flink's web UI and reporters.")
    return FlinkConfig(
        application_module=values["application_module"],
        external=_address("--external", values["external"]),
        resilience_dir=directory,
        name=name,
        parallelism=values["parallelism"],
        parallelism_given="parallelism" in parsed.given,
        from_savepoint=values["from_savepoint"],
        checkpoint_interval_ms=values["checkpoint_interval"],
        state_backend=values["state_backend"],
        jobmanager=_address("--jobmanager", values["jobmanager"]),
        ingress=_address("--ingress", values["ingress"]),
        app_args=(argv[0], *parsed.rest),
        notices=tuple(notices),
    )


def help_text() -> str:
    lines = [
        "Usage: machida-flink --application-module MODULE [OPTIONS] [APP ARGS]",
        "",
        "Runs a machida application, unmodified, as an Apache Flink job.",
        "",
        *OptionParser(OWN_OPTIONS).help_lines(),
        "",
        "machida's cluster flags (--control, --data, --worker-count, --cluster-initializer,",
        "--run-with-resilience, ...) are accepted and have no effect; Pony runtime options",
        "(--ponythreads, ...) are accepted and ignored. Options not listed here, --in and",
        "--out among them, reach application_setup(args).",
    ]
    return "\n".join(lines) + "\n"
