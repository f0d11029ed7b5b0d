"""The runner's two output streams, as machida had them.

:func:`say` writes a console line on stdout: the lines harnesses wait for
(``Application has successfully initialized.``, the recovery and shutdown
lines, Wallaroo's own ``WARNING:`` lines such as a RotateLog with rotation
off). :func:`warn` writes a diagnostic on stderr, already prefixed with
``Error:``, ``ERROR:`` or ``WARNING:``. Both flush at once: the other
processes of a cluster test read these streams while the worker runs.
"""

from __future__ import annotations

import os
import sys


def say(line: str) -> None:
    """A console line (stdout): harnesses wait for these."""
    print(line, flush=True)


def warn(line: str) -> None:
    """A diagnostic (stderr), already prefixed with Error:/WARNING:/ERROR:."""
    print(line, file=sys.stderr, flush=True)


def os_reason(err: OSError) -> str:
    """The operating system's words for ``err`` ("Address already in use"), without the
    wrapping asyncio adds ("error while attempting to bind on address ...")."""
    return os.strerror(err.errno) if err.errno else str(err)
