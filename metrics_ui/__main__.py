"""``metrics_ui``: receive a cluster's ``--metrics`` stream and show it live in a browser.

``metrics_ui [--listen HOST:PORT] [--http HOST:PORT]`` takes the workers'
stats on ``--listen`` (default ``127.0.0.1:5001``, the walkthrough's
``--metrics`` address) and serves the page on ``--http`` (default
``127.0.0.1:4000``). Flags follow the Pony tools' rules
(:mod:`machida.options`); port 0 picks a free port, and the first line on
stdout gives the real ones. SIGTERM or SIGINT stops it with status 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from machida.options import Option, OptionParser, UsageError, parse_host_port, run_cli
from metrics_ui.server import MetricsUI

USAGE = "Usage: metrics_ui [--listen HOST:PORT] [--http HOST:PORT]"

OPTIONS = [
    Option(
        "listen",
        "l",
        default="127.0.0.1:5001",
        metavar="HOST:PORT",
        help="receive the workers' --metrics stream here (default 127.0.0.1:5001)",
    ),
    Option(
        "http",
        default="127.0.0.1:4000",
        metavar="HOST:PORT",
        help="serve the page and /api/ here (default 127.0.0.1:4000)",
    ),
    Option("help", "h", kind="flag", help="show this help"),
]


def parse_address(option: str, text: str) -> tuple[str, int]:
    address = parse_host_port(text)
    if address is None or not address[0]:
        raise UsageError(f"--{option} expects HOST:PORT, got {text!r}")
    return address


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def serve(listen: tuple[str, int], http: tuple[str, int]) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    ui = MetricsUI()
    try:
        await ui.start(listen, http)
    except OSError as err:
        print(f"Error: cannot listen: {err}", file=sys.stderr)
        return 1
    stats_host, stats_port = ui.stats_address
    page_host, page_port = ui.http_address
    print(
        f"Metrics UI listening for stats on {url_host(stats_host)}:{stats_port}, "
        f"page at http://{url_host(page_host)}:{page_port}/",
        flush=True,
    )
    try:
        await stop.wait()
    finally:
        await ui.close()
    return 0


def main_args(argv: list[str]) -> int:
    parser = OptionParser(OPTIONS)
    parsed = parser.parse(argv)
    values = parsed.values
    if values["help"]:
        print("\n".join([USAGE, *parser.help_lines()]))
        return 0
    if parsed.rest:
        raise UsageError(f"unexpected argument {parsed.rest[0]!r}")
    listen = parse_address("listen", values["listen"])
    http = parse_address("http", values["http"])
    return asyncio.run(serve(listen, http))


def main() -> int:
    return run_cli(main_args, sys.argv[1:], USAGE)


if __name__ == "__main__":
    sys.exit(main())
