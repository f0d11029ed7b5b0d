"""``external_sender``: send one message to a worker's external channel.

Wallaroo's test harnesses used it to print a marker in a worker's log, to
rotate a worker's event log, or to shut a cluster down, by sending one
``u32be(2 + len) | u16be(id) | payload`` frame (2017 ids: print 11,
rotate-log 12, clean-shutdown 13) and closing. ``machida-flink`` also takes
rescale (40, the payload is the new parallelism) and savepoint (41, the
payload is an optional directory). The frame comes from
:mod:`machida.wire.external`. Like the Pony tool it reports ``Connected...``
and ``Sent message!`` on stdout; unlike it, an unknown ``--type`` is an error
rather than a silent ``print``.
"""

from __future__ import annotations

import sys

from machida.options import Option, OptionParser, UsageError, run_cli
from machida.wire import external
from wallaroo_tools.cluster_shutdown import send_once, split_address

USAGE = "Usage: external_sender --external HOST:PORT [--type TYPE] [--message TEXT]"

OPTIONS = [
    Option("external", "e", metavar="HOST:PORT", help="a worker's --external address (required)"),
    Option(
        "type",
        "t",
        default="print",
        metavar="TYPE",
        help="print (11), rotate-log (12), clean-shutdown (13); machida-flink: rescale (40), "
        "savepoint (41)",
    ),
    Option(
        "message",
        "m",
        default="",
        metavar="TEXT",
        help="payload: for rotate-log a worker, for rescale the parallelism, for savepoint "
        "a directory (optional)",
    ),
    Option("help", "h", kind="flag", help="show this help"),
]


def _build_frame(values: dict) -> bytes:
    kind = values["type"]
    msg_id = external.TYPE_IDS.get(kind.lower())
    if msg_id is None:
        *names, last = external.TYPE_IDS
        raise UsageError(f"unknown --type '{kind}' (use {', '.join(names)} or {last})")
    try:
        return external.encode(msg_id, values["message"])
    except ValueError as err:
        raise UsageError(str(err)) from None


def run(argv: list[str]) -> int:
    parser = OptionParser(OPTIONS)
    parsed = parser.parse(argv)
    if parsed.values["help"]:
        print("\n".join([USAGE, *parser.help_lines()]))
        return 0
    if parsed.rest:
        raise UsageError(f"unexpected argument {parsed.rest[0]!r}")
    target = parsed.values["external"]
    if target is None:
        raise UsageError("Must supply required '--external' argument")
    address = split_address(target)
    if address is None:
        raise UsageError("'--external' argument should be in format: '127.0.0.1:5050")
    frame = _build_frame(parsed.values)
    if not send_once(*address, frame):
        print(f"Error: Unable to connect to {target}", file=sys.stderr)
        return 1
    print("Connected...")
    print("Sent message!")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
