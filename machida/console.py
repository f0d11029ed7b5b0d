"""The two output streams every program of the project writes, as machida had them.

:func:`say` writes a console line on stdout: the lines harnesses wait for
(``Application has successfully initialized.``, the recovery and shutdown
lines, Wallaroo's own ``WARNING:`` lines such as a RotateLog with rotation
off). :func:`warn` writes a diagnostic on stderr, already prefixed with
``Error:``, ``ERROR:`` or ``WARNING:``; :func:`error_line` makes the ``Error:``
line of an exception. Each line is written whole, in one call, and flushed at
once: the other processes of a cluster test read these streams while the
worker runs, and machida-flink's JVM-watching thread prints beside its loop.
The runner and machida-flink both print through here.
"""

from __future__ import annotations

import os
import sys

ERROR = "Error: "


def say(line: str) -> None:
    """A console line (stdout): harnesses wait for these."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def warn(line: str) -> None:
    """A diagnostic (stderr), already prefixed with Error:/WARNING:/ERROR:."""
    sys.stderr.write(line + "\n")
    sys.stderr.flush()


def error_line(err: BaseException | str) -> str:
    """The ``Error: <message>`` line of an error (a message of its own, or an exception's),
    or the message as it stands when the error says it is verbatim."""
    message = str(err)
    return message if getattr(err, "verbatim", False) else ERROR + message


def os_reason(err: BaseException) -> str:
    """The operating system's words for ``err`` ("Address already in use"), without the
    wrapping asyncio adds ("error while attempting to bind on address ..."); the resolver's
    for an unknown host; the message of anything else (a port out of range)."""
    errno = getattr(err, "errno", None)
    if isinstance(errno, int) and errno > 0:
        return os.strerror(errno)
    strerror = getattr(err, "strerror", None)  # a resolver error's errno is negative
    return strerror or str(err)
