"""``integration_test``: Wallaroo's 2017 test harness, with its command line.

The 2017 application Makefiles tested each example with a line such as::

    integration_test --newline-file-sender count_this.txt --workers 3 --sink-expect 482 \\
      --command 'machida --application-module word_count' \\
      --validation-cmd 'python _test/validate.py --expected _expected.json --output' \\
      --output received.txt --log-level error

This command runs such lines unchanged: it starts the sinks, the workers
(``--command`` plus the network flags, named ``initializer``, ``worker1``, ...),
sends the inputs, stops on the stop condition, saves what the sinks received
and validates it (:mod:`wallaroo_tools.integration` has the parts). Exit
status: 2 for a command-line error (argparse's, as in 2017), 1 when the run
fails, with the reason and every worker's output on stderr; otherwise the
validation's result: the exit status of ``--validation-cmd``, or 0/1 for
``--validation-cmp``.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import os
import shlex
import signal
import subprocess
import sys

from wallaroo_tools.integration.compare import compare_bytes, compare_records
from wallaroo_tools.integration.harness import (
    DEFAULT_SINK_EXPECT_TIMEOUT_S,
    Run,
    RunError,
    pipeline_test,
)
from wallaroo_tools.integration.inputs import InputError, load_sender, parse_sender
from wallaroo_tools.integration.sinks import FRAMED, NEWLINES, SINK_MODES

LOG_FORMAT = "%(asctime)s - %(name)s - %(levelname)s - %(message)s"
LOG_LEVELS = {
    "none": logging.CRITICAL + 10,
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}
SENDERS_HELP = """\
Each sender sends its records to one source, one sender after another:
  WHAT            what to send (below)
  SOURCE          0-based index of the source, in the order the application
                  declares its pipelines (default 0)
  HEADER_FORMAT   struct format of the length header (default '>I')
"""

log = logging.getLogger("integration")


class _SenderAction(argparse.Action):
    """A sender flag: ``WHAT [SOURCE [HEADER_FORMAT]]``, appended to one list in order.

    All the sender flags share one destination, so the senders run in the
    order they were given. ``shape`` is how the help shows the values.
    """

    def __init__(self, option_strings, dest, what: str, **kwargs):
        super().__init__(option_strings, dest, nargs="+", metavar=what, **kwargs)
        self.shape = f"{what} [SOURCE [HEADER_FORMAT]]"

    def __call__(self, parser, namespace, values, option_string=None):
        senders = list(getattr(namespace, self.dest, None) or [])
        try:
            senders.append(parse_sender(option_string, list(values)))
        except InputError as err:
            parser.error(str(err))
        setattr(namespace, self.dest, senders)


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """argparse's formatter, except that a sender flag's values read as its ``shape``."""

    def _format_args(self, action, default_metavar):  # type: ignore[override]
        if isinstance(action, _SenderAction):
            return action.shape
        return super()._format_args(action, default_metavar)


class _CsvAction(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        setattr(namespace, self.dest, values.split(","))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="integration_test",
        description="Run a machida application on a local cluster, send it inputs, "
        "and validate what its sinks receive.",
        formatter_class=_Formatter,
    )
    senders = parser.add_argument_group("Senders", SENDERS_HELP)
    for flag, what, text in (
        ("--framed-file-sender", "FILES", "records of comma-separated files of framed records"),
        ("--newline-file-sender", "FILES", "each non-empty line of comma-separated files"),
        ("--sequence-sender", "RANGE", "the integers of RANGE, e.g. '(0,1000]', as u64s"),
        ("--csv-sender", "ITEMS", "each item of a comma-separated list"),
    ):
        senders.add_argument(flag, dest="senders", action=_SenderAction, what=what, help=text)
    parser.add_argument(
        "--host", default="127.0.0.1", metavar="HOST", help="address of every component"
    )
    expected = parser.add_mutually_exclusive_group()
    expected.add_argument(
        "--expected-file", metavar="FILE", help="bytes the sinks must receive (framed file)"
    )
    expected.add_argument("--expected-csv", dest="expected_val", action=_CsvAction, metavar="ITEMS",
                          help="records the sinks must receive, comma-separated")  # fmt: skip
    expected.add_argument("--expected-string", dest="expected_val", metavar="TEXT",
                          help="bytes the sinks must receive")  # fmt: skip
    validation = parser.add_mutually_exclusive_group(required=True)
    validation.add_argument(
        "--validation-cmd", metavar="CMD", help="command run with the --output path appended"
    )
    validation.add_argument("--validation-cmp", action="store_true",
                            help="compare the output with an --expected-* value")  # fmt: skip
    parser.add_argument(
        "--output", metavar="PATHS", help="file(s) for the sinks' records, comma-separated"
    )
    parser.add_argument("--giles-mode", action="store_true",
                        help="save records in giles receiver's layout")  # fmt: skip
    parser.add_argument("--workers", type=int, metavar="N", default=1, help="workers (default 1)")
    parser.add_argument(
        "--sources", type=int, metavar="N", default=1, help="sources of the app (default 1)"
    )
    parser.add_argument(
        "--sinks", type=int, metavar="N", default=1, help="sinks of the app (default 1)"
    )
    parser.add_argument("--sink-mode", default=FRAMED, choices=SINK_MODES)
    parser.add_argument(
        "--batch-size", type=int, metavar="N", default=1, help="records per send (default 1)"
    )
    parser.add_argument("--resilience-dir", metavar="DIR", default="/tmp/res-dir",
                        help="where the workers' recovery files go; those are removed "
                        "before and after the run (default /tmp/res-dir)")  # fmt: skip
    stop = parser.add_argument_group("When to stop (default: when the metrics show no traffic)")
    stop.add_argument("--sink-expect", type=int, metavar="N", action="append",
                      help="records each sink must receive (once, or once per sink)")  # fmt: skip
    stop.add_argument("--sink-expect-timeout", type=float, metavar="S",
                      default=DEFAULT_SINK_EXPECT_TIMEOUT_S,
                      help="seconds to wait for them (default 30)")  # fmt: skip
    stop.add_argument("--delay", type=float, metavar="S", help="seconds to wait after the senders")
    parser.add_argument("--command", required=True, metavar="CMD",
                        help="the worker command without network flags, e.g. "
                        "'machida --application-module reverse'")  # fmt: skip
    logs = parser.add_argument_group("Logging")
    logs.add_argument("--log-file", metavar="PATH", help="also write the log to this file")
    logs.add_argument("--log-level", choices=list(LOG_LEVELS), default="info")
    return parser


def parse_run(parser: argparse.ArgumentParser, args: argparse.Namespace) -> Run:
    """The checked :class:`Run`; command-line mistakes end in ``parser.error`` (exit 2)."""
    if args.validation_cmp and not (args.expected_file or args.expected_val is not None):
        parser.error("either '--expected-csv', '--expected-string' or '--expected-file' "
                     "must be used with '--validation-cmp'.")  # fmt: skip
    if args.validation_cmd and not args.output:
        parser.error("'--output' is required with '--validation-cmd'")
    try:
        argv = tuple(shlex.split(args.command))
    except ValueError as err:  # an unbalanced quote
        parser.error(f"argument --command: cannot split {args.command!r}: {err}")
    if not argv:
        parser.error("argument --command: the worker command is empty")
    for flag in ("workers", "sources", "sinks", "batch_size"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    expect = args.sink_expect
    if expect is not None:
        if args.delay is not None:
            parser.error("argument --delay: not allowed with argument --sink-expect")
        if len(expect) not in (1, args.sinks) or min(expect) < 0:
            parser.error(f"--sink-expect needs a count from 0 up, once or once per sink "
                         f"({args.sinks}); got {expect}")  # fmt: skip
        expect = tuple(expect * args.sinks if len(expect) == 1 else expect)
    if args.delay is not None and args.delay < 0:
        parser.error("--delay must not be negative")
    outputs = tuple(args.output.split(",")) if args.output else None
    if outputs is not None and len(outputs) != args.sinks:
        parser.error(f"--output names {len(outputs)} file(s) for {args.sinks} sink(s)")
    if args.giles_mode and args.sink_mode == NEWLINES:
        parser.error("--giles-mode needs --sink-mode framed")
    for spec in args.senders or []:
        if spec.source >= args.sources:
            parser.error(f"{spec.flag} sends to source {spec.source}, but --sources is "
                         f"{args.sources} (sources count from 0)")  # fmt: skip
    return Run(
        command=args.command, argv=argv, senders=(), workers=args.workers, sources=args.sources,
        sinks=args.sinks, sink_mode=args.sink_mode, batch_size=args.batch_size, host=args.host,
        resilience_dir=args.resilience_dir.rstrip("/") or "/", sink_expect=expect,
        sink_expect_timeout=args.sink_expect_timeout, delay=args.delay, outputs=outputs,
        giles=args.giles_mode,
    )  # fmt: skip


def setup_logging(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if args.log_file:
        try:
            handlers.append(logging.FileHandler(args.log_file, "w"))
        except OSError as err:
            parser.error(f"cannot write --log-file {args.log_file}: {err.strerror or err}")
    log.handlers.clear()
    for handler in handlers:
        handler.setFormatter(formatter)
        log.addHandler(handler)
    log.setLevel(LOG_LEVELS[args.log_level])
    log.propagate = False


def fail(reason: str, details: list[str] = ()) -> int:
    """Log a failed run; the reason reaches stderr even when the log level hides errors."""
    log.error("%s", "\n".join([reason, *details]))
    if not log.isEnabledFor(logging.ERROR):
        print(f"integration_test: {reason}", file=sys.stderr)
    return 1


async def _run(run: Run):
    task = asyncio.ensure_future(pipeline_test(run))
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await task
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def validate_cmd(command: str, output: str) -> int:
    """Run ``command + ' ' + output``; its exit status is the test's."""
    cmd = f"{command} {output}"
    try:
        done = subprocess.run(shlex.split(cmd), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (OSError, ValueError) as err:  # not found, not executable, unbalanced quotes
        reason = getattr(err, "strerror", None) or err
        return fail(f"cannot run the validation command {cmd!r}: {reason}")
    out = done.stdout.decode("utf-8", "replace")
    if done.returncode == 0:
        log.info("Validation command '%s' completed successfully%s", cmd,
                 f" with the output:\n--\n{out}" if out else "")  # fmt: skip
        return 0
    log.error("Validation command '%s' failed with the output:\n--\n%s", cmd, out)
    if not log.isEnabledFor(logging.ERROR):
        sys.stderr.write(out)
    return done.returncode if done.returncode > 0 else 1


def validate_cmp(args: argparse.Namespace, sinks) -> int:
    if args.expected_val is not None and not isinstance(args.expected_val, str):
        expected_records = [os.fsencode(item) for item in args.expected_val]
        received = [record for sink in sinks for record in sink.records]
        problem = compare_records(expected_records, received)
    else:
        if args.expected_file:
            try:
                with open(args.expected_file, "rb") as f:
                    expected = f.read()
            except OSError as err:
                return fail(f"cannot read --expected-file {args.expected_file}: {err.strerror}")
        else:
            expected = os.fsencode(args.expected_val)
        problem = compare_bytes(expected, b"".join(r for sink in sinks for r in sink.raw()))
    if problem is not None:
        return fail(problem)
    log.info("Validation by comparison completed successfully")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    run = parse_run(parser, args)
    setup_logging(parser, args)
    log.debug("Running integration test with the following options:")
    for key, value in sorted(vars(args).items()):
        log.debug("%s: %r", key, value)
    try:
        senders = tuple(load_sender(spec) for spec in args.senders or [])
    except InputError as err:
        return fail(str(err))
    run = dataclasses.replace(run, senders=senders)
    try:
        sinks = asyncio.run(_run(run))
    except RunError as err:
        return fail(f"Encountered an error while running the test for {run.command!r}: {err}",
                    err.reports)  # fmt: skip
    except (KeyboardInterrupt, asyncio.CancelledError):
        return fail("interrupted; the workers were stopped")
    if args.validation_cmd:
        code = validate_cmd(args.validation_cmd, args.output)
    else:
        code = validate_cmp(args, sinks)
    if code == 0:
        log.info("Integration test completed successfully for command %r", run.command)
    return code


if __name__ == "__main__":
    sys.exit(main())
