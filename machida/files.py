"""Making a change to a directory durable: shared by the runner, the tools and machida-flink."""

from __future__ import annotations

import os


def fsync_directory(directory: str | os.PathLike[str]) -> None:
    """Make the names created, renamed or removed in ``directory`` durable: a rename or an
    unlink survives a crash only once the directory itself is synced."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
