"""The pipeline plan: what ``application_setup(args)`` asked for, checked and frozen.

The action list an ``ApplicationBuilder`` returns is interpreted here exactly
once per process, following machida's rules: a cursor walks the list, opening a
pipeline with ``new_pipeline`` and closing it with ``to_sink`` or ``done``.
Everything a worker needs (source, steps, state partitions and their keys,
sink) ends up in frozen dataclasses; nothing in a plan does I/O, and key
placement over workers is a pure function of the plan and the worker names.
"""

from __future__ import annotations

import hashlib
import inspect
import sys
from collections import Counter
from dataclasses import dataclass
from typing import Any, Callable

from machida.app.callbacks import label
from machida.errors import ApplicationError

_SLOTS = {"slots": True} if sys.version_info >= (3, 10) else {}
U64_MASK = (1 << 64) - 1
# Wallaroo's framed sources read headers of at most 8 bytes.
MAX_HEADER_LENGTH = 8


@dataclass(frozen=True, **_SLOTS)
class Source:
    """A TCP source: where it listens and the decoder that frames it."""

    host: str
    port: str
    decoder: Any
    header_length: int


@dataclass(frozen=True, **_SLOTS)
class Sink:
    """A TCP sink: where each worker connects and the encoder it writes with."""

    host: str
    port: str
    encoder: Any


@dataclass(frozen=True, **_SLOTS)
class Computation:
    """A stateless step (``to`` or ``to_parallel``); instances are made with ``cls()``."""

    action: str
    cls: type


@dataclass(frozen=True, **_SLOTS)
class StatePartition:
    """A state step: a computation over one state per key, placed on workers by key."""

    action: str
    computation: Any
    builder: Any
    state_name: str
    partition_function: Any  # None for to_stateful: its single key is 0
    keys: tuple

    @property
    def u64(self) -> bool:
        return self.action == "to_state_partition_u64"


@dataclass(frozen=True, **_SLOTS)
class Pipeline:
    name: str
    source: Source
    steps: tuple  # of Computation | StatePartition
    sink: Sink | None


@dataclass(frozen=True, **_SLOTS)
class AppPlan:
    """A checked application: its name, pipelines, and warnings met while reading it."""

    module: str
    name: str
    pipelines: tuple
    warnings: tuple = ()

    def state_keys(self) -> dict[str, tuple]:
        """Each state name with its keys, in order of first appearance."""
        found: dict[str, tuple] = {}
        for pipeline in self.pipelines:
            for step in pipeline.steps:
                if isinstance(step, StatePartition):
                    found.setdefault(step.state_name, step.keys)
        return found

    def placement(self, workers: list[str] | tuple[str, ...],
                  state_off_initializer: bool = False) -> Placement:  # fmt: skip
        """Key *i* of each state goes to ``workers[i mod N]`` (the 2017 rule; with
        ``state_off_initializer``, among the workers after the initializer).

        ``workers`` is ``["initializer"] + worker names in join order``.
        """
        return round_robin(workers, self.state_keys(), state_off_initializer)

    def fingerprint(self, resilience: bool = False, exactly_once: bool = False) -> str:
        """A digest of what workers must agree on (machida.md §3)."""
        text = "\n".join(self.fingerprint_parts(resilience, exactly_once))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def fingerprint_parts(self, resilience: bool = False, exactly_once: bool = False) -> list[str]:
        """The lines the fingerprint is made of, to name what two workers disagree on."""
        mode = f"{resilience}, exactly-once" if exactly_once else f"{resilience}"
        parts = [f"module={self.module}", f"app={self.name}", f"resilience={mode}"]
        for pipeline in self.pipelines:
            parts.append(f"pipeline={pipeline.name}")
            for step in pipeline.steps:
                if isinstance(step, Computation):
                    parts.append(f"{step.action} {qualified(step.cls)}")
                else:
                    keys = ",".join(repr(k) for k in step.keys)
                    parts.append(
                        f"{step.action} {qualified(type(step.computation))} "
                        f"{step.state_name!r} [{keys}]"
                    )
        return parts


@dataclass(frozen=True, **_SLOTS)
class Placement:
    """Which worker owns each key of each state, by key index.

    ``workers`` is the member list in join order (the initializer first) and
    ``version`` counts the placements a cluster has had: 1 is the 2017
    round-robin rule of :meth:`AppPlan.placement`, each grow or shrink makes
    the next one with :meth:`rebalanced`. With ``state_off_initializer`` (an
    opt-in rule, kept by every placement made from this one) the initializer,
    which runs the sources and the steps before the first state, holds no key
    while there is any other worker.
    """

    workers: tuple
    owners: tuple  # ((state_name, (worker per key index, ...)), ...)
    version: int = 1
    state_off_initializer: bool = False

    def owner(self, state_name: str, key_index: int) -> str:
        return dict(self.owners)[state_name][key_index]

    def owners_of(self, state_name: str) -> tuple:
        """The owner of each key index of ``state_name``."""
        return dict(self.owners)[state_name]

    def owned_by(self, worker: str) -> dict[str, list[int]]:
        """Key indexes each state has on ``worker``."""
        return {
            name: [i for i, w in enumerate(workers) if w == worker] for name, workers in self.owners
        }

    def counts(self) -> dict[str, dict[str, int]]:
        """How many keys of each state each worker owns (every member listed)."""
        return {name: {w: owners.count(w) for w in self.workers} for name, owners in self.owners}

    def moves(self, other: Placement) -> list[tuple[str, int, str, str]]:
        """Each key whose owner differs in ``other``: ``(state, key index, from, to)``."""
        mine = dict(self.owners)
        return [(name, i, mine[name][i], owner) for name, owners in other.owners
                for i, owner in enumerate(owners) if mine[name][i] != owner]  # fmt: skip

    def rebalanced(self, workers: list[str] | tuple[str, ...]) -> Placement:
        """The next placement, for the member list ``workers`` (join order): the counts even
        out and as few keys as possible move, each at most once.

        For each state of K keys over N workers, every worker's share is K // N keys, and
        one more for the K % N workers that own the most now (ties: join order). A worker
        keeps its lowest key indexes up to its share; the rest of its keys, and every key of
        a worker that leaves, go to the workers under their share, lowest key index first,
        the workers in join order. Deterministic: every worker computes the same placement.
        With ``state_off_initializer`` the N workers are those after the initializer (when
        there are any), and the initializer's keys move as a leaving worker's do.
        """
        workers = tuple(workers)
        if not workers:
            raise ValueError("a placement needs at least one worker")
        holders = _holders(workers, self.state_off_initializer)
        owners = tuple((name, _rebalance(old, holders)) for name, old in self.owners)
        return Placement(workers, owners, self.version + 1, self.state_off_initializer)

    def to_json(self) -> dict[str, Any]:
        data = {"version": self.version, "workers": list(self.workers),
                "owners": {name: list(owners) for name, owners in self.owners}}  # fmt: skip
        if self.state_off_initializer:
            data["state_off_initializer"] = True
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Placement:
        owners = tuple((name, tuple(o)) for name, o in data["owners"].items())
        return cls(tuple(data["workers"]), owners, int(data["version"]),
                   data.get("state_off_initializer") is True)  # fmt: skip


def round_robin(workers: list[str] | tuple[str, ...], state_keys: dict[str, tuple],
                state_off_initializer: bool = False) -> Placement:  # fmt: skip
    """The 2017 placement: key *i* of each state on ``workers[i mod N]`` (version 1); with
    ``state_off_initializer``, on the workers after the first when there are any."""
    workers = tuple(workers)
    holders = _holders(workers, state_off_initializer)
    owners = tuple((name, tuple(holders[i % len(holders)] for i in range(len(keys))))
                   for name, keys in state_keys.items())  # fmt: skip
    return Placement(workers, owners, 1, state_off_initializer)


def _holders(workers: tuple, state_off_initializer: bool) -> tuple:
    """The workers of ``workers`` (the initializer first) that may own keys."""
    return workers[1:] if state_off_initializer and len(workers) > 1 else workers


def _rebalance(owners: tuple, workers: tuple) -> tuple:
    """One state's owners per key index after :meth:`Placement.rebalanced`."""
    count = Counter(owner for owner in owners if owner in workers)
    ranked = sorted(workers, key=lambda w: (-count[w], workers.index(w)))
    base, extra = divmod(len(owners), len(workers))
    share = {w: base + (1 if rank < extra else 0) for rank, w in enumerate(ranked)}
    new, free = list(owners), []
    kept: Counter[str] = Counter()
    for index, owner in enumerate(owners):
        if kept[owner] < share.get(owner, 0):
            kept[owner] += 1
        else:
            free.append(index)
    free.reverse()  # popped from the end: lowest key index first
    for worker in workers:
        while kept[worker] < share[worker]:
            new[free.pop()] = worker
            kept[worker] += 1
    return tuple(new)


def qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def build_plan(actions: Any, module: str, warn: Callable[[str], None] | None = None) -> AppPlan:
    """Interpret an action list; raise :class:`ApplicationError` for anything machida refused."""
    reader = _ActionReader(module)
    plan = reader.read(actions)
    if warn is not None:
        for line in plan.warnings:
            warn(line)
    return plan


class _ActionReader:
    """Walks the action list with a cursor: no pipeline open, or pipeline P open."""

    def __init__(self, module: str) -> None:
        self.module = module
        self.warnings: list[str] = []
        self.pipelines: list[Pipeline] = []
        self.states: dict[str, StatePartition] = {}
        self.open: dict[str, Any] | None = None

    def read(self, actions: Any) -> AppPlan:
        if not isinstance(actions, list):
            raise ApplicationError(
                f"application_setup(args) returned {type(actions).__name__}, expected the list "
                f"that ApplicationBuilder.build() returns"
            )
        name = None
        for index, action in enumerate(actions):
            if not isinstance(action, tuple) or not action or not isinstance(action[0], str):
                raise ApplicationError(
                    f"action {index} is {action!r}; expected a tuple starting with an action name"
                )
            if action[0] == "name":
                if name is None:
                    name = self._arg(action, index, 1, 2)[0]
                else:
                    self.warnings.append(
                        f"WARNING: a second application name at action {index} "
                        f"({action[1:]!r}) is ignored"
                    )
                continue
            self._apply(index, action)
        if name is None:
            raise ApplicationError("the action list has no ('name', ...) action naming the app")
        if self.open is not None:
            self.warnings.append(
                f"WARNING: pipeline '{self.open['name']}' has no to_sink() or done() and is "
                f"ignored (it never ran in machida either)"
            )
        if not self.pipelines:
            raise ApplicationError(
                "the application has no complete pipeline: each needs "
                "new_pipeline(...) and then to_sink(...) or done()"
            )
        return AppPlan(self.module, str(name), tuple(self.pipelines), tuple(self.warnings))

    def _arg(self, action: tuple, index: int, first: int, count: int) -> tuple:
        if len(action) != count:
            raise ApplicationError(
                f"action {index} ({action[0]!r}) has {len(action) - 1} argument(s), "
                f"expected {count - 1}: {action!r}"
            )
        return action[first:]

    def _apply(self, index: int, action: tuple) -> None:
        kind = action[0]
        handler = {
            "new_pipeline": self._new_pipeline,
            "to": self._stateless,
            "to_parallel": self._stateless,
            "to_stateful": self._state,
            "to_state_partition": self._state,
            "to_state_partition_u64": self._state,
            "to_sink": self._to_sink,
            "done": self._done,
        }.get(kind)
        if handler is None:
            self.warnings.append(f"WARNING: unknown action {kind!r} at action {index} is ignored")
            return
        if kind != "new_pipeline" and self.open is None:
            raise ApplicationError(self._no_pipeline(kind, index))
        handler(index, action)

    def _no_pipeline(self, kind: str, index: int) -> str:
        if kind == "done" and self.pipelines and self.pipelines[-1].sink is not None:
            closed = self.pipelines[-1].name
            return (
                f"done() at action {index} has no open pipeline: to_sink() already closed "
                f"pipeline '{closed}'. Remove done(); it is only for pipelines without a sink."
            )
        call = "done()" if kind == "done" else f"{kind}(...)"
        return f"{call} at action {index} comes before any new_pipeline(...)"

    def _new_pipeline(self, index: int, action: tuple) -> None:
        name, source = self._arg(action, index, 1, 3)
        if self.open is not None:
            raise ApplicationError(
                f"new_pipeline('{name}') at action {index} while pipeline "
                f"'{self.open['name']}' is still open; close it with to_sink(...) or done()"
            )
        if not isinstance(name, str):
            raise ApplicationError(f"pipeline name at action {index} is {name!r}; expected a str")
        self.open = {"name": name, "source": self._source(index, source), "steps": []}

    def _stateless(self, index: int, action: tuple) -> None:
        (cls,) = self._arg(action, index, 1, 2)
        if not inspect.isclass(cls):
            raise ApplicationError(
                f"{action[0]}() at action {index} got an instance of {type(cls).__name__}; "
                f"it expects a computation class"
            )
        _need_method(cls, ("compute", "compute_multi"), "a stateless computation", index)
        self._steps().append(Computation(action[0], cls))

    def _state(self, index: int, action: tuple) -> None:
        if action[0] == "to_stateful":
            comp, builder, state_name = self._arg(action, index, 1, 4)
            pf, keys = None, [0]
        else:
            comp, builder, state_name, pf, keys = self._arg(action, index, 1, 6)
        for obj, what in ((comp, "state computation"), (builder, "state builder")):
            if inspect.isclass(obj):
                raise ApplicationError(
                    f"{action[0]}() at action {index} got the class {obj.__name__} as its "
                    f"{what}; it expects an instance"
                )
        _need_method(comp, ("compute", "compute_multi"), "a state computation", index)
        _need_method(builder, ("build",), "a state builder", index)
        if pf is not None:
            _need_method(pf, ("partition",), "a partition function", index)
        if not isinstance(state_name, str):
            raise ApplicationError(f"state name at action {index} is {state_name!r}; expected str")
        step = StatePartition(
            action[0], comp, builder, state_name, pf, _check_keys(keys, action[0], index)
        )
        self._check_shared(step, index)
        self._steps().append(step)

    def _check_shared(self, step: StatePartition, index: int) -> None:
        earlier = self.states.setdefault(step.state_name, step)
        if earlier is step:
            return
        if type(earlier.builder) is not type(step.builder) or earlier.keys != step.keys:
            raise ApplicationError(
                f"state '{step.state_name}' at action {index} is shared with an earlier step "
                f"but its state builder or key list differs: {type(earlier.builder).__name__} "
                f"{list(earlier.keys)!r} vs {type(step.builder).__name__} {list(step.keys)!r}"
            )

    def _steps(self) -> list:
        """The steps of the open pipeline (a step's handler runs only while one is open)."""
        assert self.open is not None
        return self.open["steps"]

    def _to_sink(self, index: int, action: tuple) -> None:
        (config,) = self._arg(action, index, 1, 2)
        self._close(self._sink(index, config))

    def _done(self, index: int, action: tuple) -> None:
        self._arg(action, index, 1, 1)
        self._close(None)

    def _close(self, sink: Sink | None) -> None:
        opened = self.open
        assert opened is not None
        self.open = None
        self.pipelines.append(
            Pipeline(opened["name"], opened["source"], tuple(opened["steps"]), sink)
        )

    def _source(self, index: int, config: Any) -> Source:
        host, port, decoder = _tcp_config(config, index, "source")
        for method in ("header_length", "payload_length", "decode"):
            _need_method(decoder, (method,), "a decoder", index)
        return Source(host, port, decoder, _header_length(decoder))

    def _sink(self, index: int, config: Any) -> Sink:
        host, port, encoder = _tcp_config(config, index, "sink")
        _need_method(encoder, ("encode",), "an encoder", index)
        return Sink(host, port, encoder)


def _tcp_config(config: Any, index: int, what: str) -> tuple:
    if isinstance(config, tuple) and config and config[0] == "kafka":
        raise ApplicationError("Kafka sources and sinks are not supported by this runner")
    if not (isinstance(config, tuple) and len(config) == 4 and config[0] == "tcp"):
        raise ApplicationError(
            f"the {what} at action {index} is {short(config)}; expected the tuple of a "
            f"TCP{what.capitalize()}Config: ('tcp', host, port, ...)"
        )
    _, host, port, obj = config
    if not isinstance(host, str) or not isinstance(port, str):
        raise ApplicationError(
            f"the {what} at action {index} has host {host!r} and port {port!r}; both must be str"
        )
    return host, port, obj


def _need_method(obj: Any, names: tuple, role: str, index: int) -> None:
    if any(callable(getattr(obj, n, None)) for n in names):
        return
    wanted = " or ".join(f"{n}()" for n in names)
    owner = obj.__name__ if inspect.isclass(obj) else type(obj).__name__
    raise ApplicationError(f"{owner} at action {index} is used as {role} but has no {wanted}")


def _check_keys(keys: Any, action: str, index: int) -> tuple:
    if not isinstance(keys, (list, tuple)):
        raise ApplicationError(
            f"{action}() at action {index} got partition keys {short(keys)}; expected a list"
        )
    if not keys:
        raise ApplicationError(f"{action}() at action {index} got an empty key list")
    if action == "to_state_partition_u64":
        bad = [k for k in keys if not isinstance(k, int) or isinstance(k, bool)]
        if bad:
            raise ApplicationError(f"{action}() at action {index} needs int keys; got {bad[0]!r}")
        keys = [k & U64_MASK for k in keys]
    seen: dict = {}
    for key in keys:
        try:
            hash(key)
        except TypeError:
            raise ApplicationError(
                f"{action}() at action {index}: key {key!r} is not hashable"
            ) from None
        if key in seen:
            raise ApplicationError(
                f"{action}() at action {index}: key {key!r} appears twice in the key list "
                f"(equal to {seen[key]!r})"
            )
        seen[key] = key
    return tuple(keys)


def _header_length(decoder: Any) -> int:
    name = label(decoder, "header_length")
    try:
        value = decoder.header_length()
    except Exception as err:
        raise ApplicationError(f"{name}() raised {type(err).__name__}: {err}") from err
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_HEADER_LENGTH:
        raise ApplicationError(
            f"{name}() returned {value!r}; expected an int from 1 to {MAX_HEADER_LENGTH}"
        )
    return value


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
