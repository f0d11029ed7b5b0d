"""What a run keeps so that it can be resumed after a crash, rescaled, or started from a savepoint.

* :class:`Identity`: what a job's state is laid out by (the application's name,
  its pipelines, its state names with their keys, in the job's order). Two
  modules with the same identity can restore each other's savepoints, whatever
  else differs (an upgraded computation, other sink addresses).
* :class:`KeyTable`: each state's Flink key per key index, and the max
  parallelism (the number of key groups), fixed when a run first starts and
  kept with it: every key finds its state at any parallelism up to that.
* :class:`RunRecord`, ``<prefix>.run``: written durably when a run first starts
  and whenever its job changes (a rescale submits another). It names the job,
  the parallelism, what the job was restored from and the JVM that runs it, so
  that the same command, started again after a crash, resumes the run.
* :class:`SavepointInfo`, ``machida-flink.json`` inside a savepoint taken by
  ``external_sender -t savepoint``: the identity, the key table, and where each
  recorded stream ended (all of it processed), so that ``--from-savepoint``
  goes on where the savepoint left off.

:func:`restore_point` finds what a resumed run restores: the newest retained
checkpoint of its job, or else what that job was itself restored from. Nothing
here starts a JVM.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from machida.app.plan import AppPlan
from machida.errors import MachidaError
from machida_flink.files import remove
from machida_flink.stream import Base, write_durably
from machida_flink.translate import Shape

FORMAT = 1
SAVEPOINT_INFO = "machida-flink.json"
# The savepoints a rescale takes, in the run's checkpoint directory.
RESCALES = "rescales"
# Where Flink writes a checkpoint's or savepoint's metadata, last, once it is complete.
METADATA = "_metadata"
_CHECKPOINT = re.compile(r"chk-(\d+)")


class RestoreError(MachidaError):
    """A record or savepoint cannot be used by this run; the message says why."""


@dataclass(frozen=True)
class Identity:
    application: str
    pipelines: tuple[str, ...]
    states: tuple[tuple[str, tuple[str, ...]], ...]

    @classmethod
    def of(cls, plan: AppPlan, shape: Shape) -> Identity:
        keys = plan.state_keys()
        states = tuple((name, tuple(repr(k) for k in keys[name])) for name in shape.order)
        return cls(plan.name, tuple(p.name for p in plan.pipelines), states)

    def difference(self, recorded: Identity) -> str | None:
        """The first thing ``recorded`` disagrees on, as ``what: recorded X, now Y``."""
        for what, then, now in (
            ("application", recorded.application, self.application),
            ("pipelines", list(recorded.pipelines), list(self.pipelines)),
            ("states", [n for n, _ in recorded.states], [n for n, _ in self.states]),
            ("keys", dict(recorded.states), dict(self.states)),
        ):
            if then != now:
                return f"{what}: recorded {_show(then)}, now {_show(now)}"
        return None

    def to_json(self) -> dict:
        return {
            "application": self.application,
            "pipelines": list(self.pipelines),
            "states": [[name, list(keys)] for name, keys in self.states],
        }

    @classmethod
    def from_json(cls, doc: dict) -> Identity:
        states = tuple((str(name), tuple(map(str, keys))) for name, keys in doc["states"])
        return cls(str(doc["application"]), tuple(map(str, doc["pipelines"])), states)


def _show(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: [{', '.join(v)}]" for k, v in value.items()) + "}"
    return repr(value)


@dataclass(frozen=True)
class KeyTable:
    max_parallelism: int
    keys: tuple[tuple[str, tuple[int, ...]], ...]

    def of_state(self) -> dict[str, tuple[int, ...]]:
        return dict(self.keys)

    def to_json(self) -> dict:
        return {
            "max_parallelism": self.max_parallelism,
            "keys": [[name, list(keys)] for name, keys in self.keys],
        }

    @classmethod
    def from_json(cls, doc: dict) -> KeyTable:
        keys = tuple((str(name), tuple(int(k) for k in ks)) for name, ks in doc["keys"])
        return cls(int(doc["max_parallelism"]), keys)


@dataclass(frozen=True)
class RunRecord:
    """``restore``: the savepoint or checkpoint the current job was started from, or None;
    ``origin``: the ``--from-savepoint`` the run began with, or None; ``jvm``: (pid, start
    time) of the JVM that runs an embedded job; ``job_id`` is None between a rescale's
    savepoint and the submission of the job that restores it; ``stopping``: the job was
    told to drain and finish, so once no checkpoint of it is left it has finished."""

    identity: Identity
    table: KeyTable
    parallelism: int
    job_id: str | None = None
    restore: str | None = None
    origin: str | None = None
    jvm: tuple[int, int] | None = None
    stopping: bool = False  # its job was told to drain and finish (a shutdown, a savepoint)

    def save(self, path: Path) -> None:
        doc = {
            "format": FORMAT,
            "identity": self.identity.to_json(),
            "table": self.table.to_json(),
            "parallelism": self.parallelism,
            "job_id": self.job_id,
            "restore": self.restore,
            "origin": self.origin,
            "jvm": list(self.jvm) if self.jvm else None,
            "stopping": self.stopping,
        }
        write_durably(path, (json.dumps(doc, indent=1) + "\n").encode())

    @classmethod
    def load(cls, path: Path) -> RunRecord:
        doc = _read(path, "the record of a run")
        try:
            jvm = doc["jvm"]
            return cls(
                Identity.from_json(doc["identity"]),
                KeyTable.from_json(doc["table"]),
                int(doc["parallelism"]),
                doc["job_id"],
                doc["restore"],
                doc["origin"],
                (int(jvm[0]), int(jvm[1])) if jvm else None,
                bool(doc["stopping"]),
            )
        except (KeyError, TypeError, ValueError, IndexError) as err:
            raise RestoreError(f"{path} is not the record of a run: {err!r}") from None


@dataclass(frozen=True)
class SavepointInfo:
    identity: Identity
    table: KeyTable
    parallelism: int
    streams: tuple[Base, ...]

    def save(self, savepoint: Path) -> None:
        doc = {
            "format": FORMAT,
            "identity": self.identity.to_json(),
            "table": self.table.to_json(),
            "parallelism": self.parallelism,
            "streams": [base.to_json() for base in self.streams],
        }
        write_durably(savepoint / SAVEPOINT_INFO, (json.dumps(doc, indent=1) + "\n").encode())

    @classmethod
    def load(cls, savepoint: Path, identity: Identity) -> SavepointInfo:
        """The description of a savepoint taken by machida-flink for this application, or a
        :class:`RestoreError` whose message says why it cannot be used."""
        if not (savepoint / METADATA).is_file():
            raise RestoreError(f"--from-savepoint {savepoint}: no Flink savepoint there "
                               f"(no {METADATA} file)")  # fmt: skip
        if not (savepoint / SAVEPOINT_INFO).is_file():
            raise RestoreError(f"--from-savepoint {savepoint}: not a savepoint taken by "
                               f"machida-flink (no {SAVEPOINT_INFO}); take one with "
                               f"external_sender -t savepoint")  # fmt: skip
        doc = _read(savepoint / SAVEPOINT_INFO, "a savepoint's description")
        try:
            info = cls(
                Identity.from_json(doc["identity"]),
                KeyTable.from_json(doc["table"]),
                int(doc["parallelism"]),
                tuple(Base.from_json(s) for s in doc["streams"]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise RestoreError(f"--from-savepoint {savepoint}: {SAVEPOINT_INFO} is "
                               f"damaged: {err!r}") from None  # fmt: skip
        differs = identity.difference(info.identity)
        if differs is not None:
            raise RestoreError(f"--from-savepoint {savepoint} is a savepoint of another "
                               f"application or topology ({differs})")  # fmt: skip
        return info


def _read(path: Path, what: str) -> dict:
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        raise RestoreError(f"cannot read {path}: {err}") from None
    found = doc.get("format") if isinstance(doc, dict) else None
    if found != FORMAT:
        raise RestoreError(f"{path} is not {what} this version can read "
                           f"(format {found!r})")  # fmt: skip
    return doc


def local_path(location: str) -> Path:
    """A path from what Flink reports (``file:/x/y``, ``file:///x/y``) or a user gives."""
    if location.startswith("file://"):
        return Path(location[len("file://") :])
    if location.startswith("file:"):
        return Path(location[len("file:") :])
    return Path(location)


def newest_checkpoint(job_dir: Path) -> Path | None:
    """The completed checkpoint of a job with the highest number (one whose metadata,
    which Flink writes last and atomically, exists)."""
    if not job_dir.is_dir():
        return None
    found = []
    for child in job_dir.iterdir():
        match = _CHECKPOINT.fullmatch(child.name)
        if match and (child / METADATA).is_file():
            found.append((int(match.group(1)), child))
    return max(found)[1] if found else None


def restore_point(checkpoints: Path, record: RunRecord) -> Path | None:
    """What a resumed run restores: the newest of the checkpoints its jobs retained and the
    savepoints its rescales took, or else what its job was started from, or nothing (no
    job completed a checkpoint: the input is read again from the streams' bases)."""
    found = newest_retained(checkpoints)
    if found is not None:
        return found
    if record.restore is not None and (Path(record.restore) / METADATA).is_file():
        return Path(record.restore)
    return None


def newest_retained(checkpoints: Path) -> Path | None:
    """The newest of the checkpoints a run's jobs retained and the savepoints its rescales
    took (the jobs of a run follow one another, so the newest is the last one's)."""
    found = []
    if checkpoints.is_dir():
        for top in checkpoints.iterdir():
            if top.name == RESCALES:
                found += [path for path in top.iterdir() if (path / METADATA).is_file()]
            elif (newest := newest_checkpoint(top)) is not None:
                found.append(newest)
    if not found:
        return None
    return max(found, key=lambda path: (path / METADATA).stat().st_mtime_ns)


def prune(checkpoints: Path, keep: Path | None) -> None:
    """Remove what earlier jobs of the run left under ``checkpoints`` (job directories
    their checkpoints were claimed from, superseded rescale savepoints), all but ``keep``
    and what holds it. Only once no job of the run is left running."""
    if not checkpoints.is_dir():
        return
    kept = keep.resolve() if keep is not None else None

    def holds(path: Path) -> bool:
        return kept is not None and (path.resolve() == kept or path.resolve() in kept.parents)

    for child in checkpoints.iterdir():
        inside = list(child.iterdir()) if child.name == RESCALES and child.is_dir() else [child]
        for path in inside:
            if not holds(path):
                remove(path)
