"""``machida-flink``: run a machida application, unmodified, as an Apache Flink job.

The application is loaded here first with the project's loader and plan, so a
wrong module gives the same errors and exit status as ``machida``; only then
is a JVM started. See :mod:`machida_flink.runner` for the run itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys

from machida.app.loader import BUILD_FAILED, load_plan
from machida.errors import ApplicationError
from machida.options import UsageError
from machida_flink.options import ConfigError, help_text, parse


def _error(err: Exception) -> str:
    text = str(err)
    return text if text.startswith("Error:") or "\n" in text else f"Error: {text}"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv if argv is None else argv)
    if any(word in ("-h", "--help") for word in argv[1:]):
        sys.stdout.write(help_text())
        return 0
    try:
        config = parse(argv)
    except (UsageError, ConfigError) as err:
        print(_error(err), file=sys.stderr)
        return 1
    with contextlib.suppress(AttributeError, ValueError):
        sys.stdout.reconfigure(line_buffering=True)
    for line in config.notices:
        print(line, file=sys.stderr)
    warn = lambda line: print(line, file=sys.stderr)  # noqa: E731
    try:
        module, plan = load_plan(config.application_module, list(config.app_args), warn=warn)
        from machida_flink.translate import shape

        shape(plan)
    except ApplicationError as err:
        print(_error(err), file=sys.stderr)
        if "Could not load module" not in str(err):
            print(BUILD_FAILED, file=sys.stderr)
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
