"""``machida-flink``: run a machida application, unmodified, as an Apache Flink job.

The application is loaded here first with the project's loader and plan, so a
wrong module gives the same errors and exit status as ``machida``; only then
is a JVM started. See :mod:`machida_flink.runner` for the run itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from machida.app.loader import load_plan, report_load_failure
from machida.console import error_line, warn
from machida.errors import ApplicationError, ConfigError
from machida.options import UsageError
from machida_flink.options import help_text, parse


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(word in ("-h", "--help") for word in argv[1:]):
        sys.stdout.write(help_text())
        return 0
    try:
        config = parse(argv)
    except (UsageError, ConfigError) as err:
        warn(error_line(err))
        return 1
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)
    for line in config.notices:
        warn(line)
    try:
        module, plan = load_plan(config.application_module, list(config.app_args), warn=warn)
        from machida_flink.translate import shape

        shape(plan)
    except ApplicationError as err:
        report_load_failure(err, warn)
        return 1
    from machida_flink.runner import FlinkRunner

    async def run() -> int:  # the runner's events belong to the loop asyncio.run makes
        return await FlinkRunner(config, module, plan).run()

    try:
        return asyncio.run(run())
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
