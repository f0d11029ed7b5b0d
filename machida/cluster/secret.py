"""The cluster secret: what every worker proves before another worker reads a byte from it.

On one machine nothing needs to be said: the first worker to start creates a
random secret in ``$XDG_CONFIG_HOME/machida/cluster-secret`` (by default
``~/.config/machida/cluster-secret``), readable by its own user only, and the
others find it there. Workers on other hosts are given a copy of that file
with ``--cluster-secret-file FILE``. A secret file that other users can read,
or that another user owns, is refused: whoever can read it can join the
cluster.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from pathlib import Path

from machida.errors import SecretError

FILE_NAME = "cluster-secret"
# Fewer characters than this would be guessable; a created secret has 64 (256 bits in hex).
MIN_LENGTH = 32


def default_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "machida" / FILE_NAME


def cluster_secret(path: str | None = None) -> bytes:
    """The secret in ``path`` (``--cluster-secret-file``), or in the default place, created
    there on first use."""
    if path is None:
        default = default_path()
        if not default.exists():
            try:
                _create(default)
            except OSError as err:
                raise SecretError(f"cannot create the cluster secret {default}: "
                                  f"{_reason(err)}; set XDG_CONFIG_HOME to a writable "
                                  "directory or give --cluster-secret-file") from err  # fmt: skip
        return _read(default)
    return _read(Path(path))


def _reason(err: OSError) -> str:
    return os.strerror(err.errno) if err.errno else str(err)


def _create(path: Path) -> None:
    """Write a new secret so that no reader ever sees a partial one, and a worker starting at
    the same moment keeps the secret written first."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    temp = path.with_name(f".{FILE_NAME}.{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(temp)  # left by an earlier process of the same number that died here
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "w") as file:
            file.write(secrets.token_hex(32) + "\n")
            file.flush()
            os.fsync(file.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)  # fails if another worker was first: its secret stands
    finally:
        os.unlink(temp)


def _read(path: Path) -> bytes:
    try:
        info = path.stat()
        text = path.read_bytes().strip()
    except OSError as err:
        raise SecretError(f"cannot read the cluster secret {path}: {_reason(err)}") from err
    if info.st_uid != os.getuid():
        raise SecretError(f"the cluster secret {path} belongs to another user")
    if stat.S_IMODE(info.st_mode) & 0o077:
        mode = oct(stat.S_IMODE(info.st_mode))[2:]
        raise SecretError(f"the cluster secret {path} can be read by other users "
                          f"(mode {mode}); make it private: chmod 600 {path}")  # fmt: skip
    if len(text) < MIN_LENGTH:
        raise SecretError(f"the cluster secret {path} is too short "
                          f"({len(text)} characters, at least {MIN_LENGTH})")  # fmt: skip
    return text
