"""How a run begins: fresh, resumed after a crash, or from a savepoint.

:func:`plan_start` looks at the run's files and ``--from-savepoint`` and opens
the recorded streams accordingly:

* a run record in ``--resilience-dir`` means the previous run with this module
  and ``--name`` did not stop cleanly: it is *resumed*. Its streams are read
  back (every frame they accepted, the connections left open), and its job
  restores the newest retained checkpoint, or what it was itself started from,
  at the parallelism the run had (after its rescales);
* otherwise, with ``--from-savepoint``, new streams start at the offsets the
  savepoint's job had read to, and the job restores the savepoint at
  ``--parallelism`` (the savepoint's own if not given);
* otherwise the run is fresh; its key table is made once the JVM is up.

What it finds wrong is a :class:`~machida_flink.restore.RestoreError` whose
message is the line to print. Nothing here talks to Flink.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from machida.console import warn
from machida_flink.files import RunFiles, remove
from machida_flink.options import FlinkConfig
from machida_flink.restore import (
    Identity,
    KeyTable,
    RestoreError,
    RunRecord,
    SavepointInfo,
    local_path,
    newest_retained,
    prune,
    restore_point,
)
from machida_flink.stream import Stream, base_path, read_base


@dataclass
class Start:
    """``table`` is None for a fresh run; ``restore`` is what the first job restores;
    ``claim``: whether that job owns it; ``record``: the record of a resumed run;
    ``dangling``: per stream, the connections a crashed run left open."""

    kind: str  # "fresh", "resume" or "savepoint"
    streams: list[Stream]
    parallelism: int
    table: KeyTable | None = None
    restore: Path | None = None
    claim: bool = False
    origin: str | None = None
    record: RunRecord | None = None
    connections: int = 0
    dangling: list[set[int]] = field(default_factory=list)

    def close(self) -> None:
        for stream in self.streams:
            stream.close()


def plan_start(config: FlinkConfig, files: RunFiles, identity: Identity, pipelines: int) -> Start:
    if files.record.exists():
        resumed = _resume(config, files, identity, pipelines)
        if resumed is not None:
            return resumed
    for path in files.stale():
        warn(f"WARNING: discarding {path}, left by a run that stopped before it accepted input")
        remove(path)
    paths = files.streams(pipelines)
    if config.from_savepoint is None:
        return Start("fresh", [Stream.create(path) for path in paths], config.parallelism)
    savepoint = local_path(config.from_savepoint).resolve()
    info = SavepointInfo.load(savepoint, identity)
    if len(info.streams) != pipelines:  # the identity names the pipelines; a damaged file
        raise RestoreError(f"--from-savepoint {savepoint}: its description has "
                           f"{len(info.streams)} stream(s) for {pipelines} "
                           f"pipeline(s)")  # fmt: skip
    streams = _opened([lambda path=path, base=base: Stream.create(path, base)
                       for path, base in zip(paths, info.streams)])  # fmt: skip
    parallelism = config.parallelism if config.parallelism_given else info.parallelism
    return Start("savepoint", streams, parallelism, info.table, savepoint, False,
                 str(savepoint), connections=max(b.connections for b in info.streams))  # fmt: skip


def _resume(config: FlinkConfig, files: RunFiles, identity: Identity,
            pipelines: int) -> Start | None:  # fmt: skip
    """The start of a resumed run, or None when the previous one had in fact finished."""
    record = RunRecord.load(files.record)
    differs = identity.difference(record.identity)
    if differs is not None:
        raise RestoreError(
            f"{files.directory} holds a run of '{files.prefix}' that did not stop "
            f"cleanly, of another application or topology ({differs}). Remove its files or "
            f"use another --resilience-dir or --name.\nTo remove them: {clear_command(files)}"
        )
    paths = files.streams(pipelines)
    missing = [path for path in paths if not base_path(path).exists()]
    if missing:
        raise RestoreError(f"{missing[0]} of the run of '{files.prefix}' is missing; "
                           f"it cannot be resumed.\nTo remove its files: "
                           f"{clear_command(files)}")  # fmt: skip
    retained = newest_retained(files.checkpoints)
    if retained is None and record.stopping and all(map(_all_committed, paths)):
        # Told to drain, its final checkpoint committed every stream, and Flink removed its
        # checkpoints when it finished: the process stopped before removing its files.
        warn(f"WARNING: the previous run of '{files.prefix}' had drained its job when it "
             f"stopped: nothing is left to resume, and its files are discarded")  # fmt: skip
        for path in [*files.stale(), files.record]:
            remove(path)
        return None
    if config.from_savepoint is not None:
        asked = str(local_path(config.from_savepoint).resolve())
        if asked != record.origin:
            began = f"from savepoint {record.origin}" if record.origin else "fresh"
            raise RestoreError(
                f"{files.directory} holds a run of '{files.prefix}' that did not stop "
                f"cleanly (it began {began}); start it without --from-savepoint to resume it, "
                f"or remove its files first.\nTo remove them: {clear_command(files)}"
            )
    restore = restore_point(files.checkpoints, record)
    if restore is None and any(read_base(path).offset > 0 for path in paths):
        raise RestoreError(f"the run of '{files.prefix}' in {files.directory} cannot be "
                           f"resumed: no checkpoint of its jobs is left, and the input before "
                           f"them was given back.\nTo remove its files: "
                           f"{clear_command(files)}")  # fmt: skip
    prune(files.checkpoints, restore)  # no job of the run is left (the caller saw to it)
    resumed = []
    try:
        for path in paths:
            resumed.append(Stream.resume(path))
    except BaseException:
        for stream, _ in resumed:
            stream.close()
        raise
    claim = restore is not None and files.checkpoints.resolve() in restore.resolve().parents
    return Start(
        "resume",
        [stream for stream, _ in resumed],
        record.parallelism,
        record.table,
        restore,
        claim,
        record.origin,
        record,
        connections=max(max(s.base.connections, scan.last_connection) for s, scan in resumed),
        dangling=[scan.open for _, scan in resumed],
    )


def _all_committed(path: Path) -> bool:
    """Whether a stream's base is its end: a completed checkpoint holds all of it."""
    return read_base(path).offset == path.stat().st_size


def _opened(openers: list) -> list[Stream]:
    streams: list[Stream] = []
    try:
        for opener in openers:
            streams.append(opener())
    except BaseException:
        for stream in streams:
            stream.close()
        raise
    return streams


def clear_command(files: RunFiles) -> str:
    import shlex

    found = [*files.stale(), files.record]
    return "rm -rf " + " ".join(shlex.quote(str(path)) for path in found if path.exists())
