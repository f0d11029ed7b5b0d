"""Resilience mode for one worker: its event log, recovery from it, and log rotation.

With ``--run-with-resilience`` each state call whose ``persist`` is a ``bool``
marks its key dirty; in each flush :meth:`Resilience.commit` appends the
newest snapshot of every dirty key (through the module's ``serialize``), the
highest sequence number applied from each upstream worker, the batches about
to leave for each downstream worker and the records each source has
accepted, and fsyncs, before any of those batches is sent or anything is
acknowledged upstream. A worker started again with the same command restores
all of it from the log (``RESILIENCE: Replayed <n> entries from recovery log
file.``): its states, what the boundary must skip when an upstream re-sends,
and its own unacknowledged batches, which it sends again under its old
incarnation and numbers; a source says how many records it had accepted
(``RESILIENCE: <pipeline> source had accepted <n> record(s)``), so that its
sender resumes after them. ``--log-rotation`` starts a new file, holding a snapshot of
every owned key, when the current one grows past ``--event-log-file-size`` or
on an external RotateLog request (machida.md §9.5). Without rotation flags the
log stays bounded all the same: past ``--event-log-limit`` bytes it is
*compacted*, replaced (atomically, by a rename) with a file that holds only
what recovery needs, the same content a rotation starts a file with. With
``--exactly-once`` the commits also hold the output about to be written to the
sinks and the numbering of its streams (:mod:`machida.durability.eventlog`).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable, Protocol

from machida.app.callbacks import Callbacks, fn_label, serialized
from machida.config import DEFAULT_EVENT_LOG_LIMIT
from machida.console import say
from machida.durability.eventlog import EventLog, EventLogError, Replay, encode_commit, recover_log
from machida.durability.recovery import TEMP_SUFFIX, RecoveryFiles
from machida.files import fsync_directory
from machida.wire.boundary import Batch
from machida.wire.exactly_once import OutputRun, Stream

ROTATION_PAUSE = "log rotation"


class ResilienceHost(Protocol):
    """What resilience needs of the worker's data plane."""

    serializers: tuple[Callable[[Any], Any], Callable[[Any], Any]]
    callbacks: Callbacks
    incarnation: int

    def source_counts(self) -> dict[str, int]:
        """Records each source (by pipeline name) has taken in."""

    def restore_source_counts(self, counts: dict[str, int]) -> None:
        """What a recovered log says the sources had taken in."""

    def acks(self) -> dict[str, int]:
        """How far each downstream worker has acknowledged."""

    def backups(self) -> dict[str, tuple[int, list[Batch]]]:
        """Each downstream worker's acknowledged mark and the batches it may still need."""

    def restore_boundary(self, peer: str, acked: int, next_seq: int, frames: list[bytes]) -> None:
        """A recovered backup for ``peer``, re-sent once its boundary is up."""

    @property
    def states(self) -> dict[str, dict[int, Any]]:
        """The states this worker owns, by state name and key index."""

    def origins(self) -> dict[str, tuple[int, int]]:
        """The newest ``(incarnation, seq)`` applied from each upstream worker."""

    def restore_origins(self, origins: dict[str, tuple[int, int]]) -> None:
        """What a recovered log says was applied from each upstream worker."""

    def flush(self) -> None:
        """Send what is buffered; it ends with :meth:`Resilience.commit`."""

    def stream_counters(self) -> dict[tuple[int, int], tuple[int, int]]:
        """The numbering of each output stream: ``(pipeline, key) -> (epoch, last seq)``."""

    def restore_counters(self, counters: dict[tuple[int, int], tuple[int, int]]) -> None:
        """What a recovered log says of the output streams' numbering."""

    def sink_acked(self) -> dict[int, dict[Stream, int]]:
        """How far each sink's receiver has acknowledged each stream."""

    def sink_backlogs(self) -> dict[int, list[bytes]]:
        """Each sink's unacknowledged output, as frames."""

    def restore_sink(self, p: int, runs: list[OutputRun]) -> None:
        """A recovered sink backlog, sent again once the receiver says what it holds."""


class _NotOpen:
    """The host of a resilience not opened yet: using it is a bug of the runner."""

    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"resilience used before open() (host.{name})")


_NOT_OPEN: Any = _NotOpen()


class Pausable(Protocol):
    """Whatever holds the worker's inputs (its flow control)."""

    def pause(self, reason: str) -> None: ...

    def resume(self, reason: str) -> None: ...


@dataclass(frozen=True)
class Settings:
    """The resilience flags of the command line, and what names this worker's log."""

    module: str
    worker: str
    fingerprint: str
    rotation: bool = False
    max_size: int | None = None
    stop_pause_s: float = 0.0
    limit: int = DEFAULT_EVENT_LOG_LIMIT

    @classmethod
    def of(cls, config: Any, fingerprint: str) -> Settings:
        return cls(config.application_module, config.name, fingerprint, config.log_rotation,
                   config.event_log_file_size, config.stop_pause_ns / 1e9,
                   config.event_log_limit)  # fmt: skip

    @property
    def threshold(self) -> int:
        """The size past which the log is rotated (``--log-rotation``) or compacted."""
        return self.max_size if self.rotation and self.max_size else self.limit


def banners(config: Any) -> list[str]:
    """The lines a worker in resilience mode prints at start (machida.md §9.4)."""
    return [
        "****RESILIENCE MODE is active****",
        f"||| Resilience directory: {config.resilience_dir}|||",
        f"||| Log-rotation: {'true' if config.log_rotation else 'false'}|||",
        *(["||| Exactly-once output: true|||"] if config.exactly_once else []),
    ]


class Resilience:
    """The event log of one worker and what it takes to write and replay it."""

    def __init__(self, settings: Settings, files: RecoveryFiles, flow: Pausable) -> None:
        self.settings = settings
        self.files = files
        self.flow = flow
        self.host: ResilienceHost = _NOT_OPEN
        self.dirty: set[tuple[str, int]] = set()
        # what the log holds already, so that a commit adds only what changed
        self.origins: dict[str, tuple[int, int]] = {}
        self.acked: dict[str, int] = {}
        self.accepted: dict[str, int] = {}
        self.counters: dict[tuple[int, int], tuple[int, int]] = {}
        self.sink_acked: dict[Stream, int] = {}
        self.log: EventLog | None = None
        self.fresh_size = 0  # the size of the log file when it last started afresh
        # what a new file starts with (the acknowledged marks, the source counts, the output
        # streams' numbering and their receivers' marks), once it is the log
        self._logged: tuple[dict, dict, dict, dict] = ({}, {}, {}, {})
        self.rotating = False
        self.rotation_task: asyncio.Task | None = None

    def persist(self, state_name: str, key_index: int, flag: Any) -> None:
        """The hook after each state call: a ``bool`` persist means snapshot this key."""
        if flag.__class__ is bool:
            self.dirty.add((state_name, key_index))

    # -- opening and recovering ------------------------------------------------------------

    def _path(self, offset: int) -> str:
        return self.files.event_log_path(offset if self.settings.rotation else None)

    def _open_log(self, path: str, offset: int = 0) -> EventLog:
        s = self.settings
        return EventLog(path, s.module, s.worker, s.fingerprint, offset)

    def open(self, host: ResilienceHost, recovering: bool) -> None:
        """Open the log for ``host`` (the worker's data plane, built); when recovering,
        restore everything from the log first."""
        self.host = host
        if not recovering:
            self.log = self._open_log(self._path(0))
            self.log.append(encode_commit(incarnation=self.host.incarnation))
            self.log.sync()
            self.fresh_size = self.log.size
            return
        path, replay = self._newest_complete()
        self._restore(replay)  # and fresh_size stays 0: a long log is bounded at once
        say(f"RESILIENCE: Replayed {replay.entries} entries from recovery log file.")
        for source, count in replay.accepted.items():
            say(f"RESILIENCE: {source} source had accepted {count} record(s)")
        self.log = self._open_log(path, self.files.event_log_offset(path))

    def _newest_complete(self) -> tuple[str, Replay]:
        """The newest log file that holds a complete commit (a rotation may have been cut),
        with a torn final commit cut off."""
        s = self.settings
        logs = self.files.event_logs()
        for path in logs:  # a compaction that did not finish: its log is still whole
            with contextlib.suppress(FileNotFoundError):
                os.remove(path + TEMP_SUFFIX)
        if not logs:
            raise EventLogError(
                f"event log missing: expected {self._path(0)} "
                f"(the recovery files say this worker ran with resilience)"
            )
        for path in reversed(logs):
            replay = recover_log(path, s.module, s.worker, s.fingerprint)
            if replay.entries or path == logs[0]:
                for newer in logs[logs.index(path) + 1 :]:
                    os.remove(newer)  # an unfinished rotation: its older file still counts
                return path, replay
        raise AssertionError("unreachable")

    def _restore(self, replay: Replay) -> None:
        deserialize = self.host.serializers[1]
        for (state_name, key_index), data in replay.snapshots.items():
            states = self.host.states.get(state_name)
            if states is None:
                continue  # a state of another application version: the fingerprint differs
            try:
                states[key_index] = deserialize(data)
            except BaseException as err:
                self.host.callbacks.fatal(fn_label(deserialize), err)
                raise EventLogError(
                    f"event log snapshot of state '{state_name}' key index {key_index} "
                    f"cannot be deserialised: {type(err).__name__}: {err}"
                ) from err
        self.host.restore_origins(replay.origins)
        self.origins = dict(replay.origins)
        if replay.incarnation is not None:
            self.host.incarnation = replay.incarnation  # its backup keeps its numbers
        for peer, link in replay.links.items():
            frames = [frame for _, _, frame in link.batches]
            self.host.restore_boundary(peer, link.acked, link.next_seq, frames)
            self.acked[peer] = link.acked
        self.host.restore_source_counts(replay.accepted)
        self.accepted = dict(replay.accepted)
        self.host.restore_counters(replay.counters)
        self.counters = self.host.stream_counters()
        for p, sink in replay.sinks.items():
            self.host.restore_sink(p, sink.runs())
            self.sink_acked.update(sink.acked)

    # -- writing ---------------------------------------------------------------------------

    def commit(
        self,
        leaving: list[tuple[str, list[Batch]]],
        outputs: Sequence[tuple[int, list[bytes]]] = (),
    ) -> None:
        """In a flush, before its batches and output leave: log dirty snapshots, new origins,
        the batches, the output and its streams' numbering, and new source counts, then fsync
        (group commit). OSError if the disk refuses."""
        if self.log is None:
            return  # not open yet: no topology, so nothing was applied or forwarded
        host = self.host
        origins = _changed(host.origins(), self.origins)
        accepted = _changed(host.source_counts(), self.accepted)
        forwarded = [(peer, b.first, b.records, b.frame) for peer, taken in leaving for b in taken]
        written = [(p, frame) for p, frames in outputs for frame in frames]
        counters = _changed(host.stream_counters(), self.counters)
        if not (self.dirty or origins or accepted or forwarded or written or counters):
            return  # nothing to log
        keys, self.dirty = self.dirty, set()
        snapshots = self._snapshots(keys)
        if not (snapshots or origins or accepted or forwarded or written or counters):
            return  # every serialize raised: nothing to log, the keys stay dirty
        acked = _changed(host.acks(), self.acked)  # these ride along, never alone
        sink_acked = _changed(_flat(host.sink_acked()), self.sink_acked)
        self.log.append(encode_commit(snapshots, origins, forwarded=forwarded, acked=acked,
                                      accepted=accepted, outputs=written, counters=counters,
                                      sink_acked=sink_acked))  # fmt: skip
        self.log.sync()
        self.origins.update(origins)
        self.acked.update(acked)
        self.accepted.update(accepted)
        self.counters.update(counters)
        self.sink_acked.update(sink_acked)
        self._bound()

    def _bound(self) -> None:
        """Past the threshold (and twice the size the file started with, so that a large
        snapshot is not written again at every commit), rotate or compact."""
        log, s = self._current(), self.settings
        if log.size <= max(s.threshold, 2 * self.fresh_size):
            return
        if s.rotation:
            self.start_rotation()
        else:
            self.compact()

    def release(self, keys: list[tuple[str, int]]) -> None:
        """Keys handed over to another worker, acknowledged there: logged (and synced) as no
        longer held here, before anyone is told the handover is complete. OSError if the disk
        refuses."""
        if self.log is None:
            return
        for key in keys:
            self.dirty.discard(key)
        self.log.append(encode_commit(released=keys))
        self.log.sync()

    def _snapshots(self, keys: Any) -> list[tuple[str, int, bytes]]:
        """Serialised states of ``keys``; a key whose serialize raised goes back to dirty."""
        serialize = self.host.serializers[0]
        states = self.host.states
        out = []
        for state_name, key_index in sorted(keys):
            state = states[state_name][key_index]
            # a snapshot that failed is not logged; the state lives on and is logged next time
            try:
                result = serialize(state)
            except BaseException as err:
                self.dirty.add((state_name, key_index))
                self.host.callbacks.failed(fn_label(serialize), err, state_name, "snapshot")
                continue
            data = serialized(result)
            if data is None:
                self.dirty.add((state_name, key_index))
                self.host.callbacks.invalid(fn_label(serialize), result, state_name, "snapshot")
                continue
            out.append((state_name, key_index, data))
        return out

    # -- rotation --------------------------------------------------------------------------

    def request_rotation(self) -> None:
        """An external RotateLog for this worker."""
        if not self.settings.rotation:
            say("WARNING: LogRotation requested, but log_rotation is off!")
        elif self.log is None or not self.log.dirty or self.rotating:
            say("Event log does not contain new data. Rotate log request ignored.")
        else:
            self.start_rotation()

    def start_rotation(self) -> None:
        if not self.rotating:
            self.rotating = True
            self.rotation_task = asyncio.get_running_loop().create_task(self._rotate())

    async def _rotate(self) -> None:
        say("Starting event log rotation.")
        say("~~~Stopping message processing for log rotation.~~~")
        self.flow.pause(ROTATION_PAUSE)
        try:
            await asyncio.sleep(self.settings.stop_pause_s)
            self.host.flush()  # its commit logs what is pending to the old file
            self._switch_log()
            say("Steps snapshotting to new log file complete.")
            for path in self.files.event_logs():
                if path != self._current().path:
                    os.remove(path)
        except Exception as err:
            say(f"WARNING: event log rotation failed ({type(err).__name__}: {err}); "
                f"still logging to {self._current().path}")  # fmt: skip
        finally:
            say("~~~Resuming message processing.~~~")
            self.rotating = False
            self.flow.resume(ROTATION_PAUSE)

    def _current(self) -> EventLog:
        """The open event log (a rotation starts only once there is one)."""
        assert self.log is not None
        return self.log

    def _switch_log(self) -> None:
        """Log to a new file that starts with a snapshot of every owned key."""
        keys = self._keys()
        say(f"Snapshotting {len(keys)} steps to new log file.")
        old = self._current()
        offset = old.offset + old.size
        new = self._open_log(self._path(offset), offset)
        try:
            new.append(self._everything(keys))
            new.sync()
        except BaseException:
            with contextlib.suppress(OSError):
                new.close()  # its buffer may not flush either (disk full)
            os.remove(new.path)  # else recovery would prefer it to the old log, still in use
            raise
        self._started(new)
        old.close()

    def compact(self) -> None:
        """Replace the log with a file holding only what recovery needs (a rename, so a crash
        leaves one or the other whole). OSError if the disk refuses."""
        old = self._current()
        keys = self._keys()
        commit = self._everything(keys)
        if len(self.dirty & set(keys)):  # a snapshot failed: the old file still holds its state
            self.fresh_size = old.size
            return
        temporary = old.path + TEMP_SUFFIX
        new = self._open_log(temporary, old.offset)
        try:
            new.append(commit)
            new.sync()
            new.close()
            os.replace(temporary, old.path)
            fsync_directory(os.path.dirname(old.path) or ".")
        except BaseException:
            with contextlib.suppress(OSError):
                new.close()
            with contextlib.suppress(OSError):
                os.remove(temporary)
            raise
        old.close()
        self._started(self._open_log(old.path, old.offset))
        say(f"Event log compacted: {old.size} -> {self.fresh_size} bytes "
            f"(--event-log-limit {self.settings.limit})")  # fmt: skip

    def _keys(self) -> list[tuple[str, int]]:
        return [(name, i) for name, states in self.host.states.items() for i in states]

    def _everything(self, keys: list[tuple[str, int]]) -> bytes:
        """The commit a new file starts with: everything recovery needs."""
        host = self.host
        backups = host.backups()
        forwarded = [(peer, b.first, b.records, b.frame)
                     for peer, (_, taken) in backups.items() for b in taken]  # fmt: skip
        outputs = [(p, frame) for p, frames in host.sink_backlogs().items() for frame in frames]
        self._logged = (
            {peer: mark for peer, (mark, _) in backups.items()},
            host.source_counts(),
            host.stream_counters(),
            _flat(host.sink_acked()),
        )
        acked, accepted, counters, _ = self._logged
        return encode_commit(self._snapshots(keys), host.origins(), incarnation=host.incarnation,
                             forwarded=forwarded, acked=acked, accepted=accepted,
                             outputs=outputs, counters=counters)  # fmt: skip

    def _started(self, log: EventLog) -> None:
        """``log`` is the file from now on, starting with :meth:`_everything`."""
        log.dirty = False
        self.log = log
        self.fresh_size = log.size
        self.acked, self.accepted, self.counters, self.sink_acked = self._logged

    def close(self) -> None:
        if self.log is not None:
            self.log.close()


def _flat(acked: dict[int, dict[Stream, int]]) -> dict[Stream, int]:
    return {stream: seq for marks in acked.values() for stream, seq in marks.items()}


def _changed(now: dict, logged: dict) -> dict:
    """The entries of ``now`` that the log does not hold yet (a zero count needs no entry)."""
    return {key: value for key, value in now.items() if logged.get(key, 0) != value}
