"""``cluster_shrinker``: ask a running cluster to shrink, or which workers may leave.

Wallaroo 0.5.0's tool, with its command line: ``--external HOST:PORT`` (any
worker's external channel) and exactly one of ``--query`` (which workers are
eligible), ``--count N`` (the first N eligible workers, in join order, leave)
or ``--workers w2,w3``. It sends the shrink request (:mod:`machida.wire.external`,
id 14) and prints the answer: ``Eligible for shrink: Node count: <n>, Nodes:
|w1,w2,|`` for a query, ``Cluster shrink response: <text>`` otherwise (a
refusal says why and shrinks nothing). It exits 0 once answered, 1 on a usage
error or when no worker answers.
"""

from __future__ import annotations

import sys

from machida.options import Option, OptionParser, UsageError, run_cli
from machida.wire import external
from wallaroo_tools.external_client import NoAnswer, answer_lines, ask, external_address

USAGE = "Usage: cluster_shrinker --external HOST:PORT (--query | --count N | --workers w2,w3)"
EXACTLY_ONE = "You must specify exactly one of --query, --count, or --workers"

OPTIONS = [
    Option("external", "e", metavar="HOST:PORT", help="a worker's --external address (required)"),
    Option("query", "q", kind="flag", help="list the workers that may leave"),
    Option("count", "c", kind="int", minimum=1, metavar="N", help="shrink by N workers"),
    Option("workers", "w", metavar="W1,W2", help="shrink by these workers"),
    Option("help", "h", kind="flag", help="show this help"),
]


def _request(values: dict) -> str:
    asked = [v for v in (values["query"] or None, values["count"], values["workers"]) if v]
    if len(asked) != 1:
        raise UsageError(EXACTLY_ONE)
    if values["query"]:
        return "?"
    return str(values["count"]) if values["count"] else values["workers"]


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
    frame = external.encode(external.SHRINK, _request(parsed.values))
    try:
        msg_id, text = ask(*address, frame)
    except NoAnswer as err:
        print(str(err), file=sys.stderr)
        return 1
    if msg_id not in external.ANSWERS[external.SHRINK]:
        print(f"Received incorrect external message type {msg_id}", file=sys.stderr)
        return 1
    print("\n".join(answer_lines(msg_id, text)))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(run, sys.argv[1:] if argv is None else argv, USAGE)


if __name__ == "__main__":
    sys.exit(main())
