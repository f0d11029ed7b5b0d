"""machida's own command-line options, and the argument list an application sees.

The table below is machida.md §2: every option the runner consumes. Whatever
is not in it (``--in``, ``--out``, an application's own flags) is left, in its
original order, for ``application_setup(args)``; the Pony runtime's options
are removed first, as the Pony runtime did before machida saw its argv.
"""

from __future__ import annotations

from machida.options import Option, OptionParser

RUNNER_OPTIONS = [
    Option("application-module", metavar="MODULE", help="application module to import"),
    Option("metrics", "m", metavar="HOST:PORT", help="where to send stats records (required)"),
    Option("control", "c", metavar="HOST:PORT", help="initializer control address"),
    Option("data", "d", metavar="HOST:PORT", help="initializer data address"),
    Option(
        "my-control",
        "x",
        default="0.0.0.0:0",
        metavar="HOST:PORT",
        help="a worker's control listener",
    ),
    Option(
        "my-data", "y", default="0.0.0.0:0", metavar="HOST:PORT", help="a worker's data listener"
    ),
    Option("external", "e", metavar="HOST:PORT", help="external channel listener"),
    Option(
        "worker-count",
        "w",
        kind="int",
        default=1,
        metavar="N",
        help="workers in the cluster, initializer included",
    ),
    Option(
        "cluster-initializer",
        "t",
        kind="flag",
        default=False,
        help="this process is the initializer",
    ),
    Option("name", "n", metavar="NAME", help="worker name (required on workers)"),
    Option("resilience-dir", "r", default="/tmp", metavar="DIR", help="where recovery files live"),
    Option("run-with-resilience", kind="flag", default=False, help="turn on resilience"),
    Option("log-rotation", kind="flag", default=False, help="enable event-log rotation"),
    Option(
        "event-log-file-size",
        "l",
        kind="int",
        metavar="BYTES",
        help="rotate the event log past this size",
    ),
    Option(
        "stop-pause",
        "u",
        kind="int",
        default=2_000_000_000,
        metavar="NS",
        help="pause during a log rotation",
    ),
    Option("join", "j", metavar="HOST:PORT", help="autoscale join (not supported)"),
    Option("file", "f", metavar="FILE", help="accepted and ignored"),
    Option("phone-home", "p", metavar="HOST:PORT", help="accepted and ignored"),
    Option("spike-seed", metavar="N", help="accepted and ignored"),
    Option("spike-drop", kind="flag", default=False, help="accepted and ignored"),
    Option("spike-prob", metavar="P", help="accepted and ignored"),
    Option("spike-margin", metavar="N", help="accepted and ignored"),
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
