"""A run's files in ``--resilience-dir``, and the lock that keeps two runs off them.

Every name starts with ``<module>-<name>-flink`` (``--name``, ``initializer``
by default), so runs with different names share a directory safely:

* ``<prefix>-<pipeline index>.ingress``: what the ingress recorded for a pipeline,
  and ``.ingress.base`` beside it, where the file is whole from;
* ``<prefix>-checkpoints/``: Flink's checkpoints of the run's jobs, and in
  ``rescales/`` the savepoints rescales take;
* ``<prefix>.run``: the run's record (:class:`machida_flink.restore.RunRecord`);
* ``<prefix>.lock``: held (``flock``) for the whole run; a second run with the
  same module and name is refused while it is held.

A run that did not stop cleanly leaves them, and the same command resumes it.
Streams or checkpoints without a record (a run that stopped before it
accepted anything) are discarded by the next start with a warning. Savepoints
taken with ``external_sender -t savepoint`` go to ``<module>-<name>-savepoints/``
by default; they belong to the user, and no run removes them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
from pathlib import Path

from machida.errors import MachidaError


class RunLocked(MachidaError):
    """Another run holds the lock; the message is the line to print."""


class RunFiles:
    def __init__(self, directory: Path, module: str, name: str) -> None:
        self.directory = directory
        self.prefix = f"{module}-{name}-flink"
        self.checkpoints = directory / f"{self.prefix}-checkpoints"
        self.record = directory / f"{self.prefix}.run"
        self.savepoints = directory / f"{module}-{name}-savepoints"
        self.lock_path = directory / f"{self.prefix}.lock"
        self._lock_fd = -1

    def stream(self, pipeline: int) -> Path:
        return self.directory / f"{self.prefix}-{pipeline}.ingress"

    def lock(self) -> None:
        """Hold the run's lock, or raise :class:`RunLocked`."""
        while True:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                raise RunLocked(
                    f"another machida-flink run uses {self.lock_path} (same module and "
                    f"--name in {self.directory}); give this one another --name or "
                    f"--resilience-dir"
                ) from None
            # a run ending between our open and our lock removes the file: lock the one there
            with contextlib.suppress(FileNotFoundError):
                if os.fstat(fd).st_ino == os.stat(self.lock_path).st_ino:
                    self._lock_fd = fd
                    return
            os.close(fd)

    def unlock(self) -> None:
        if self._lock_fd >= 0:
            with contextlib.suppress(FileNotFoundError):
                self.lock_path.unlink()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def streams(self, count: int) -> list[Path]:
        return [self.stream(p) for p in range(count)]

    def stale(self) -> list[Path]:
        """This module's and name's streams and checkpoints, as a previous run left them."""
        pattern = re.compile(re.escape(self.prefix) + r"-\d+\.ingress(\.base)?")
        found = sorted(p for p in self.directory.iterdir() if pattern.fullmatch(p.name))
        if self.checkpoints.exists():
            found.append(self.checkpoints)
        return found


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
