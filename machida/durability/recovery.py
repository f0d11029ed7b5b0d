"""Recovery files: what a process records once it has joined, and finds when it starts again.

machida.md §9.1 and §9.2. After the start-up handshake each process writes its
topology as small JSON documents (each with a ``format`` version) named
``<dir>/<module>-<worker>.<ext>``, ``.local-topology`` last, so that its
presence marks a complete set. At the next start :meth:`RecoveryFiles.inspect`
turns what it finds into a :class:`Fresh` start or a :class:`Recover`, or
refuses with a :class:`RecoveryError`; a clean shutdown calls
:meth:`RecoveryFiles.remove_all`. Event logs (``.evlog``) are written by the
event-log module but belong to the same set, so they are found and removed here.
The runtime prints the lines this module returns; nothing here opens a socket.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Callable, Union

from machida.app.plan import Placement
from machida.errors import RecoveryError
from machida.files import fsync_directory

_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}

# 2: the member list is joined by the placement of the keys and a change in progress
FORMAT = 2
LOCAL_TOPOLOGY = "local-topology"
TCP_CONTROL = "tcp-control"
WORKERS = "workers"
TCP_DATA = "tcp-data"
CONNECTION_ADDRESSES = "connection-addresses"
EXTENSIONS = (LOCAL_TOPOLOGY, TCP_CONTROL, WORKERS, TCP_DATA, CONNECTION_ADDRESSES)
REQUIRED_INITIALIZER = (LOCAL_TOPOLOGY, TCP_CONTROL, WORKERS)
REQUIRED_WORKER = (*REQUIRED_INITIALIZER, TCP_DATA, CONNECTION_ADDRESSES)
# A fixed suffix, not a random one, so that a crash's leftovers are recognisably ours.
TEMP_SUFFIX = ".tmp"

RECOVERING = "Recovering from recovery files!"
MISSING = "Some resilience/recovery files are missing! Cannot continue!"

Address = tuple[str, int]


@dataclass(frozen=True, **_SLOTS)
class Peer:
    """Another process of the cluster, as this one last knew it."""

    name: str
    control: Address
    data: Address | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "control", tuple(self.control))
        object.__setattr__(self, "data", None if self.data is None else tuple(self.data))


@dataclass(frozen=True, **_SLOTS)
class RecoveryRecord:
    """Everything one process's recovery files hold together.

    ``owned_keys`` (state name → key indexes) and ``peers`` (name →
    ``{"control": [h, p], "data": [h, p]}``) may be given as mappings; they are
    kept as tuples so that a record is immutable and compares by value.
    """

    module: str
    worker: str
    fingerprint: str
    worker_count: int
    workers: tuple[str, ...]  # join order, initializer first
    owned_keys: tuple[tuple[str, tuple[int, ...]], ...]
    resilience: bool
    control: Address  # as actually bound
    data: Address | None = None  # as actually bound
    peers: tuple[Peer, ...] = ()
    # the cluster's placement of the keys, and the one it is changing to (a grow or shrink
    # in progress: what a restarted initializer completes), with the workers leaving in it
    placement: Placement | None = None
    target: Placement | None = None
    leaving: tuple[str, ...] = ()
    # the initializer's --worker-count when it last started: a restart with the same one
    # keeps the members the cluster has grown or shrunk to, another one rescales to it
    requested_count: int | None = None
    exactly_once: bool = False  # --exactly-once (recorded from the first version that had it)
    format: int = FORMAT

    def __post_init__(self) -> None:
        given_keys: Any = self.owned_keys
        given_peers: Any = self.peers
        keys = given_keys.items() if isinstance(given_keys, Mapping) else given_keys
        peers = ([Peer(n, **p) for n, p in given_peers.items()] if isinstance(given_peers, Mapping)
                 else given_peers)  # fmt: skip
        fix = object.__setattr__
        fix(self, "workers", tuple(self.workers))
        fix(self, "owned_keys", tuple((name, tuple(ixs)) for name, ixs in keys))
        fix(self, "control", tuple(self.control))
        fix(self, "data", None if self.data is None else tuple(self.data))
        fix(self, "peers", tuple(peers))
        fix(self, "leaving", tuple(self.leaving))
        for name in ("placement", "target"):
            given: Any = getattr(self, name)
            if isinstance(given, Mapping):
                fix(self, name, Placement.from_json(dict(given)))

    def owned(self) -> dict[str, list[int]]:
        """The owned key indexes as a plain mapping."""
        return {name: list(ixs) for name, ixs in self.owned_keys}


@dataclass(frozen=True, **_SLOTS)
class Expectation:
    """What the starting process knows; ``None`` means it cannot know, so it is not checked."""

    fingerprint: str
    resilience: bool
    worker_count: int | None = None  # the initializer's --worker-count
    workers: tuple[str, ...] | None = None
    format: int = FORMAT
    exactly_once: bool = False


@dataclass(frozen=True, **_SLOTS)
class Fresh:
    """Start as if for the first time, after printing ``notices``."""

    notices: tuple[str, ...] = ()


@dataclass(frozen=True, **_SLOTS)
class Recover:
    """Rejoin with the recorded topology; ``event_logs`` are oldest first."""

    record: RecoveryRecord
    event_logs: tuple[str, ...] = ()


Decision = Union[Fresh, Recover]


class RecoveryFiles:
    """The recovery files of one ``<module>-<worker>`` in one directory."""

    def __init__(self, directory: str, module: str, worker: str, initializer: bool) -> None:
        self.directory = directory
        self.module = module
        self.worker = worker
        self.initializer = initializer
        self.stem = f"{module}-{worker}"
        self._evlog = re.compile(re.escape(self.stem) + r"(?:-([0-9a-fA-F]{16}))?\.evlog")

    def paths(self) -> dict[str, str]:
        return {ext: os.path.join(self.directory, f"{self.stem}.{ext}") for ext in EXTENSIONS}

    def required(self) -> tuple[str, ...]:
        return REQUIRED_INITIALIZER if self.initializer else REQUIRED_WORKER

    def event_log_path(self, offset: int | None = None) -> str:
        """The event log's name; with rotation on, ``offset`` is the cumulative byte offset."""
        suffix = "" if offset is None else f"-{offset:016x}"
        return os.path.join(self.directory, f"{self.stem}{suffix}.evlog")

    def found(self) -> list[str]:
        """This process's files in the directory, temporary ones included, by name."""
        return [os.path.join(self.directory, name) for name in self._listdir() if self._owns(name)]

    def event_logs(self) -> list[str]:
        """This process's event logs, oldest first: the unrotated one, then by offset."""
        logs = [(m.group(1), n) for n in self._listdir() if (m := self._evlog.fullmatch(n))]
        logs.sort(key=lambda log: -1 if log[0] is None else int(log[0], 16))
        return [os.path.join(self.directory, name) for _, name in logs]

    def event_log_offset(self, path: str) -> int:
        """The cumulative byte offset at which event log ``path`` starts (0 if unrotated)."""
        match = self._evlog.fullmatch(os.path.basename(path))
        if match is None:
            raise ValueError(f"{path} is not an event log of {self.stem!r}")
        return int(match.group(1) or "0", 16)

    def write(self, topology: RecoveryRecord) -> None:
        """Record ``topology`` durably; ``.local-topology`` is renamed into place last."""
        if (topology.module, topology.worker) != (self.module, self.worker):
            raise ValueError(f"topology of {topology.worker!r} given to {self.stem!r}")
        documents = _documents(topology)
        if not set(self.required()) <= documents.keys():
            raise ValueError(f"{self.stem!r} needs data and peer addresses, got {topology!r}")
        os.makedirs(self.directory, exist_ok=True)
        paths = self.paths()
        # Until the new set is complete, the old one must not look complete either.
        if _remove(paths[LOCAL_TOPOLOGY]):
            fsync_directory(self.directory)
        for ext in EXTENSIONS[1:]:
            if ext in documents:
                _write_durably(paths[ext], documents[ext])
            else:
                _remove(paths[ext])
        fsync_directory(self.directory)
        _write_durably(paths[LOCAL_TOPOLOGY], documents[LOCAL_TOPOLOGY])
        fsync_directory(self.directory)

    def read(self, expected_format: int = FORMAT) -> RecoveryRecord:
        """The recorded set; RecoveryError if a file is missing, unreadable or of another format."""
        present = set(self.found())
        paths = self.paths()
        missing = [paths[ext] for ext in self.required() if paths[ext] not in present]
        if missing:
            raise RecoveryError("\n".join([MISSING, *missing]), verbatim=True)
        documents = {ext: _load(path) for ext, path in paths.items() if path in present}
        for document in documents.values():
            if document["format"] != expected_format:
                raise self._different("format", document["format"], expected_format)
        fields = {}
        for ext, document in documents.items():
            fields.update(_fields(paths[ext], document, _SCHEMA[ext]))
        if (fields["module"], fields["worker"]) != (self.module, self.worker):
            cause = f"it records module {fields['module']!r} and worker {fields['worker']!r}"
            raise _unreadable(paths[LOCAL_TOPOLOGY], cause)
        return RecoveryRecord(**fields, format=expected_format)

    def inspect(self, expected: Expectation) -> Decision:
        """machida.md §9.2: what to do with the files found at start-up."""
        found = self.found()
        if not found:
            return Fresh()
        mark = self.paths()[LOCAL_TOPOLOGY]
        if mark not in found:
            notice = f"Found recovery files without {mark}: an earlier start never finished."
            removed = self._remove(found)
            return Fresh((notice, "Removing leftover recovery files", *_removing(removed)))
        topology = self.read(expected.format)
        self._check(topology, expected)
        return Recover(topology, tuple(self.event_logs()))

    def remove_all(self) -> list[str]:
        """Remove every file of this process (clean shutdown); return the removed paths."""
        return self._remove(self.found())

    def _remove(self, paths: list[str]) -> list[str]:
        # The completeness mark goes first: a crash half-way leaves mere leftovers.
        mark = self.paths()[LOCAL_TOPOLOGY]
        removed = [p for p in paths if p == mark and _remove(p)]
        if removed:
            fsync_directory(self.directory)
        removed += [p for p in paths if p != mark and _remove(p)]
        if removed:
            fsync_directory(self.directory)
        return removed

    def _listdir(self) -> list[str]:
        try:
            return sorted(os.listdir(self.directory))
        except FileNotFoundError:
            return []

    def _owns(self, name: str) -> bool:
        # Exact names only: a prefix would also match worker-2's files when we are worker.
        if name.endswith(TEMP_SUFFIX):
            name = name[: -len(TEMP_SUFFIX)]
        own = {f"{self.stem}.{ext}" for ext in EXTENSIONS}
        return name in own or self._evlog.fullmatch(name) is not None

    def _check(self, topology: RecoveryRecord, expected: Expectation) -> None:
        # The mode before the fingerprint, which includes it (AppPlan.fingerprint),
        # and the count before the names, so that each refusal names its first cause.
        workers = None if expected.workers is None else list(expected.workers)
        checks = (
            (
                "resilience mode",
                _mode(topology.resilience, topology.exactly_once),
                _mode(expected.resilience, expected.exactly_once),
            ),
            ("worker count", topology.worker_count, expected.worker_count),
            ("worker names", list(topology.workers), workers),
            ("fingerprint", topology.fingerprint, expected.fingerprint),
        )
        for field, recorded, now in checks:
            if now is not None and recorded != now:
                raise self._different(field, recorded, now)

    def _different(self, field: str, recorded: Any, now: Any) -> RecoveryError:
        return RecoveryError(
            f"recovery files in {self.directory} for '{self.stem}' belong to a different"
            f" application or topology ({field}: recorded {recorded!r}, now {now!r})."
            " Remove them or use another --resilience-dir.\n"
            f"To remove them: {self.clear_command()}"
        )

    def clear_command(self) -> str:
        """The shell command that removes this worker's recovery files and event logs."""
        files = " ".join(shlex.quote(path) for path in self.found())
        return f"rm -f {files}" if files else "(no files)"


def removal_lines(paths: list[str]) -> list[str]:
    """What a clean shutdown prints around :meth:`RecoveryFiles.remove_all` (machida.md §8.1)."""
    return ["Removing recovery files", *_removing(paths), "Recovery files removed."]


def _removing(paths: list[str]) -> list[str]:
    return [f"...Removing {path}..." for path in paths]


def _mode(resilience: bool, exactly_once: bool = False) -> str:
    if exactly_once:
        return "on, exactly-once"
    return "on" if resilience else "off"


def _documents(topology: RecoveryRecord) -> dict[str, dict]:
    """One JSON document per file, with the fields _SCHEMA names; json writes tuples as lists."""
    values = {key: getattr(topology, key) for schema in _SCHEMA.values() for key in schema}
    values["owned_keys"] = topology.owned()
    values["peers"] = {p.name: {"control": p.control, "data": p.data} for p in topology.peers}
    for name in ("placement", "target"):
        placement = getattr(topology, name)
        values[name] = None if placement is None else placement.to_json()
    documents = {
        ext: {"format": topology.format, **{key: values[key] for key in schema}}
        for ext, schema in _SCHEMA.items()
    }
    for key, default in _OPTIONAL.items():  # written only when it says something
        if documents[LOCAL_TOPOLOGY].get(key) == default:
            del documents[LOCAL_TOPOLOGY][key]
    if topology.data is None:
        del documents[TCP_DATA]
    if not topology.peers:
        del documents[CONNECTION_ADDRESSES]
    return documents


def _write_durably(path: str, document: dict) -> None:
    temporary = path + TEMP_SUFFIX
    with open(temporary, "w", encoding="utf-8") as file:
        file.write(json.dumps(document, indent=2) + "\n")
        file.flush()
        os.fsync(file.fileno())
    os.replace(temporary, path)


def _remove(path: str) -> bool:
    try:
        os.remove(path)
    except FileNotFoundError:
        return False
    return True


def _load(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as file:
            document = json.load(file)
    except (OSError, ValueError) as exc:
        raise _unreadable(path, str(exc)) from exc
    if not isinstance(document, dict) or not _kind(int)(document.get("format")):
        raise _unreadable(path, "expected a JSON object with an integer 'format'")
    return document


def _fields(path: str, document: dict, schema: dict[str, Callable[[Any], bool]]) -> dict:
    document = {**{k: v for k, v in _OPTIONAL.items() if k in schema}, **document}
    for key, valid in schema.items():
        if key not in document:
            raise _unreadable(path, f"missing field {key!r}")
        if not valid(document[key]):
            raise _unreadable(path, f"field {key!r} holds {document[key]!r}")
    return {key: document[key] for key in schema}


def _unreadable(path: str, cause: str) -> RecoveryError:
    return RecoveryError(f"recovery file {path} cannot be read: {cause}")


# Validators for JSON values, combined into each file's schema below.
Valid = Callable[[Any], bool]


def _kind(kind: type) -> Valid:
    # JSON true is not an integer here, although Python's bool is an int.
    return lambda v: isinstance(v, kind) and (kind is bool or not isinstance(v, bool))


def _list_of(item: Valid) -> Valid:
    return lambda v: isinstance(v, list) and all(map(item, v))


def _map_of(item: Valid) -> Valid:
    return lambda v: isinstance(v, dict) and all(map(item, v.values()))


def _record(**fields: Valid) -> Valid:
    return lambda v: isinstance(v, dict) and all(ok(v.get(k)) for k, ok in fields.items())


def _pair(first: Valid, second: Valid) -> Valid:
    return lambda v: isinstance(v, list) and len(v) == 2 and first(v[0]) and second(v[1])


# Fields a file written before they existed leaves out, and what that means.
_OPTIONAL: dict[str, Any] = {"exactly_once": False}
_ADDRESS = _pair(_kind(str), _kind(int))  # [host, port]
_NAMES = _list_of(_kind(str))
_PLACEMENT = _record(version=_kind(int), workers=_NAMES, owners=_map_of(_NAMES))
_SCHEMA: dict[str, dict[str, Valid]] = {
    LOCAL_TOPOLOGY: {
        "module": _kind(str),
        "worker": _kind(str),
        "fingerprint": _kind(str),
        "worker_count": _kind(int),
        "resilience": _kind(bool),
        "exactly_once": _kind(bool),
        "owned_keys": _map_of(_list_of(_kind(int))),
    },
    TCP_CONTROL: {"control": _ADDRESS},
    WORKERS: {
        "workers": _NAMES,
        "placement": lambda v: v is None or _PLACEMENT(v),
        "target": lambda v: v is None or _PLACEMENT(v),
        "leaving": _NAMES,
        "requested_count": lambda v: v is None or _kind(int)(v),
    },
    TCP_DATA: {"data": _ADDRESS},
    CONNECTION_ADDRESSES: {
        "peers": _map_of(_record(control=_ADDRESS, data=lambda v: v is None or _ADDRESS(v)))
    },
}
