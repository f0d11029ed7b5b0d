"""Resilience mode for one worker: its event log, recovery from it, and log rotation.

With ``--run-with-resilience`` each state call whose ``persist`` is a ``bool``
marks its key dirty; after each batch :meth:`Resilience.commit` appends the
newest snapshot of every dirty key (through the module's ``serialize``) and the
highest sequence number applied from each upstream worker, and fsyncs, before
the worker acknowledges anything upstream. A worker started again with the same
command restores its states and origins from the log
(``RESILIENCE: Replayed <n> entries from recovery log file.``); its upstream
then re-sends what was not acknowledged and the boundary skips what the log
shows as applied. ``--log-rotation`` starts a new file, holding a snapshot of
every owned key, when the current one grows past ``--event-log-file-size`` or
on an external RotateLog request (machida.md §9.5).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any

from machida.app.callbacks import fn_label
from machida.durability.eventlog import EventLog, EventLogError, encode_commit, recover_log
from machida.wire.boundary import Dedup

ROTATION_PAUSE = "log rotation"


class Resilience:
    """The event log of one worker and what it takes to write and replay it."""

    def __init__(self, worker: Any) -> None:
        self.worker = worker
        cfg = worker.config
        self.rotation = cfg.log_rotation
        self.max_size = cfg.event_log_file_size
        self.stop_pause_s = cfg.stop_pause_ns / 1e9
        self.fingerprint = worker.plan.fingerprint(True)
        self.dirty: set[tuple[str, int]] = set()
        self.origins: dict[str, tuple[int, int]] = {}
        self.log: EventLog | None = None
        self.rotating = False
        self._rotation_task: asyncio.Task | None = None

    @staticmethod
    def banners(cfg: Any) -> list[str]:
        return [
            "****RESILIENCE MODE is active****",
            f"||| Resilience directory: {cfg.resilience_dir}|||",
            f"||| Log-rotation: {'true' if cfg.log_rotation else 'false'}|||",
        ]

    def persist(self, state_name: str, key_index: int, flag: Any) -> None:
        """The hook after each state call: a ``bool`` persist means snapshot this key."""
        if flag.__class__ is bool:
            self.dirty.add((state_name, key_index))

    # -- opening and recovering ------------------------------------------------------------

    def _path(self, offset: int) -> str:
        return self.worker.recovery.event_log_path(offset if self.rotation else None)

    def open(self, recovering: bool) -> None:
        """Open the log; when recovering, restore states and origins from it first."""
        worker = self.worker
        cfg = worker.config
        if not recovering:
            self.log = EventLog(self._path(0), cfg.application_module, worker.name,
                                self.fingerprint)  # fmt: skip
            return
        path, replay = self._newest_complete()
        self._restore(replay)
        worker.say(f"RESILIENCE: Replayed {replay.entries} entries from recovery log file.")
        offset = worker.recovery.event_log_offset(path)
        self.log = EventLog(path, cfg.application_module, worker.name, self.fingerprint, offset)

    def _newest_complete(self) -> tuple[str, Any]:
        """The newest log file that holds a complete commit (a rotation may have been cut),
        with a torn final commit cut off."""
        worker = self.worker
        cfg = worker.config
        logs = worker.recovery.event_logs()
        if not logs:
            raise EventLogError(
                f"Error: event log missing: expected {self._path(0)} "
                f"(the recovery files say this worker ran with resilience)"
            )
        for path in reversed(logs):
            replay = recover_log(path, cfg.application_module, worker.name, self.fingerprint)
            if replay.entries or path == logs[0]:
                for newer in logs[logs.index(path) + 1 :]:
                    os.remove(newer)  # an unfinished rotation: its older file still counts
                return path, replay
        raise AssertionError("unreachable")

    def _restore(self, replay: Any) -> None:
        worker = self.worker
        deserialize = worker.serializers[1]
        for (state_name, key_index), data in replay.snapshots.items():
            states = worker.topology.states.get(state_name, {})
            if key_index not in states:
                continue
            try:
                states[key_index] = deserialize(data)
            except Exception as err:
                raise EventLogError(
                    f"Error: event log snapshot of state '{state_name}' key index {key_index} "
                    f"cannot be deserialised: {type(err).__name__}: {err}"
                ) from err
        for upstream, (incarnation, seq) in replay.origins.items():
            dedup = worker.dedup.setdefault(upstream, Dedup())
            dedup.incarnation, dedup.seq = incarnation, seq
        self.origins = dict(replay.origins)

    # -- writing ---------------------------------------------------------------------------

    def commit(self) -> None:
        """After a batch: log dirty snapshots and new origins, then fsync (group commit)."""
        origins = {n: o for n, o in self._origins().items() if self.origins.get(n) != o}
        if self.log is None or (not self.dirty and not origins):
            return  # nothing to log, or the log is not open yet (no topology)
        keys, self.dirty = self.dirty, set()
        snapshots = self._snapshots(keys)
        if not snapshots and not origins:
            return  # every serialize raised: nothing to log, the keys stay dirty
        self.log.append(encode_commit(snapshots, origins))
        self.log.sync()
        self.origins.update(origins)
        if self.rotation and self.max_size and self.log.size > self.max_size:
            self.start_rotation()

    def _origins(self) -> dict[str, tuple[int, int]]:
        """The newest ``(incarnation, seq)`` applied from each upstream worker."""
        return {n: (d.incarnation, d.seq) for n, d in self.worker.dedup.items()
                if d.incarnation is not None}  # fmt: skip

    def _snapshots(self, keys: Any) -> list[tuple[str, int, bytes]]:
        """Serialised states of ``keys``; a key whose serialize raised goes back to dirty."""
        worker = self.worker
        serialize = worker.serializers[0]
        out = []
        for state_name, key_index in sorted(keys):
            state = worker.topology.states[state_name][key_index]
            try:
                data = serialize(state)
                out.append((state_name, key_index, bytes(data)))
            except Exception as err:
                # the snapshot is not logged; the state lives on and is logged next time
                self.dirty.add((state_name, key_index))
                worker.callbacks.raised(fn_label(serialize), err, state_name, "snapshot")
        return out

    # -- rotation --------------------------------------------------------------------------

    def request_rotation(self) -> None:
        """An external RotateLog for this worker."""
        worker = self.worker
        if not self.rotation:
            worker.say("WARNING: LogRotation requested, but log_rotation is off!")
        elif self.log is None or not self.log.dirty or self.rotating:
            worker.say("Event log does not contain new data. Rotate log request ignored.")
        else:
            self.start_rotation()

    def start_rotation(self) -> None:
        if not self.rotating:
            self.rotating = True
            self._rotation_task = asyncio.get_running_loop().create_task(self._rotate())

    async def _rotate(self) -> None:
        worker, say = self.worker, self.worker.say
        say("Starting event log rotation.")
        say("~~~Stopping message processing for log rotation.~~~")
        worker.pause(ROTATION_PAUSE)
        try:
            await asyncio.sleep(self.stop_pause_s)
            worker.flush()  # ends with self.commit()
            self._switch_log()
            say("Steps snapshotting to new log file complete.")
            for path in worker.recovery.event_logs():
                if path != self.log.path:
                    os.remove(path)
        except Exception as err:
            say(f"WARNING: event log rotation failed ({type(err).__name__}: {err}); "
                f"still logging to {self.log.path}")  # fmt: skip
        finally:
            say("~~~Resuming message processing.~~~")
            self.rotating = False
            worker.resume(ROTATION_PAUSE)

    def _switch_log(self) -> None:
        """Log to a new file that starts with a snapshot of every owned key."""
        worker = self.worker
        keys = [(name, i) for name, states in worker.topology.states.items() for i in states]
        worker.say(f"Snapshotting {len(keys)} steps to new log file.")
        old = self.log
        offset = old.offset + old.size
        cfg = worker.config
        new = EventLog(self._path(offset), cfg.application_module, worker.name,
                       self.fingerprint, offset)  # fmt: skip
        try:
            new.append(encode_commit(self._snapshots(keys), self._origins()))
            new.sync()
        except BaseException:
            with contextlib.suppress(OSError):
                new.close()  # its buffer may not flush either (disk full)
            os.remove(new.path)  # else recovery would prefer it to the old log, still in use
            raise
        new.dirty = False
        old.close()
        self.log = new

    def close(self) -> None:
        if self.log is not None:
            self.log.close()
