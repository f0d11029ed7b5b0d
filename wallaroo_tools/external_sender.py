"""``external_sender``: send one message to a worker's external channel.

Wallaroo's test harnesses used it to print a marker in a worker's log, to
rotate a worker's event log, or to shut a cluster down, by sending one
``u32be(2 + len) | u16be(id) | payload`` frame (2017 ids: print 11,
rotate-log 12, clean-shutdown 13) and closing. Later Wallaroo versions added a
shrink (0.4.0, id 14: ``--message`` is ``?``, a count, or ``w2,w3``) and
placement queries (0.5.0): ``partition-query``, ``partition-count-query`` and
``cluster-status-query``; for those it waits for the worker's answer and prints
it (``--json``: the JSON alone). ``machida-flink`` also takes rescale (40, the
payload is the new parallelism) and savepoint (41, the payload is an optional
directory). The frame comes from
:mod:`machida.wire.external`. Like the Pony tool it reports ``Connected...`` and
``Sent message!`` on stdout; unlike it, an unknown ``--type`` is an error rather
than a silent ``print``.
"""

from __future__ import annotations

import sys

from machida.options import Option, OptionParser, UsageError, run_cli
from machida.wire import external
from wallaroo_tools.external_client import NoAnswer, answer_lines, ask, external_address, send_once

USAGE = "Usage: external_sender --external HOST:PORT [--type TYPE] [--message TEXT] [--json]"
TYPES = ", ".join(external.TYPE_IDS)

OPTIONS = [
    Option("external", "e", metavar="HOST:PORT", help="a worker's --external address (required)"),
    Option("type", "t", default="print", metavar="TYPE", help=TYPES),
    Option("message", "m", default="", metavar="TEXT",
           help="payload; for rotate-log a worker; for shrink ?, a count or w2,w3; for "
                "rescale the parallelism; for savepoint a directory (optional)"),
    Option("json", "j", kind="flag", help="print a query's answer as its JSON alone"),
    Option("help", "h", kind="flag", help="show this help"),
]  # fmt: skip


def _build_frame(values: dict) -> tuple[int, bytes]:
    kind = values["type"]
    msg_id = external.TYPE_IDS.get(kind.lower())
    if msg_id is None:
        raise UsageError(f"unknown --type '{kind}' (use {TYPES})")
    try:
        return msg_id, external.encode(msg_id, values["message"])
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
    address = external_address(target)
    msg_id, frame = _build_frame(parsed.values)
    if msg_id not in external.ANSWERS:
        if not send_once(*address, frame):
            print(f"Error: Unable to connect to {target}", file=sys.stderr)
            return 1
        print("Connected...")
        print("Sent message!")
        return 0
    try:
        answer_id, text = ask(*address, frame)
    except NoAnswer as err:
        print(f"Error: {err}", file=sys.stderr)
        return 1
    as_json = parsed.values["json"]
    if not as_json:
        print("Connected...")
        print("Sent message!")
    print("\n".join(answer_lines(answer_id, text, as_json)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
