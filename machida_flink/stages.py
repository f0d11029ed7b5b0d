"""The Python operators of the Flink job: the application's objects, called once per message.

Each operator loads the application itself in ``open()`` (import the module,
``application_setup(args)``, the checked plan), as every machida worker did,
and carries messages through a :class:`machida.app.topology.LocalTopology`, the
same object the runner and ``machida.testing`` use, so the calling rules and
the error policy are the project's own. Flink sees batches only:

* :class:`SourceStage` takes a record of ingress entries (the frames of one or
  more socket reads), decodes every frame, runs the stateless steps with one
  set of instances per sender connection, calls ``partition``, and emits one
  record per (state step, key) holding that key's messages in order, plus one
  record per sink holding the encoded bytes of the read;
* :class:`StateStage` is keyed by the state's key: it applies the state
  computation to each message of a record in order, with the key's state
  object taken from Flink keyed state (``deserialize``) and written back after
  the batch (``serialize``), then runs what follows in the pipeline the same
  way (stateless steps, the next state's ``partition``, the encoder).

Records between operators are ``(flink key, route, key index, batch)`` tuples
(:data:`ROUTED`) and, for sinks, ``(sink index, bytes)`` (:data:`SINK_RECORD`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from pyflink.common import Types
from pyflink.datastream import KeyedProcessFunction, OutputTag, ProcessFunction, RuntimeContext
from pyflink.datastream.state import ValueStateDescriptor

from machida.app.callbacks import Callbacks, build_state
from machida.app.loader import ints_round_trip, load_plan, serializers
from machida.app.plan import Placement
from machida.app.topology import LocalTopology
from machida.errors import ApplicationError
from machida_flink import batch
from machida_flink.ingress_log import CLOSED, FRAMES, OPENED, split_entries, split_frames

ROUTED = Types.TUPLE([Types.INT(), Types.INT(), Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
SINK_RECORD = Types.TUPLE([Types.INT(), Types.PRIMITIVE_ARRAY(Types.BYTE())])
# In the operators' LocalTopology every key belongs to "elsewhere": each message
# routed to a state step leaves the operator as part of a batch.
HERE, ELSEWHERE = "flink", "flink-state"


@dataclass(frozen=True)
class Wiring:
    """What every operator needs to know about the job, computed once by the client.

    ``routes[r]`` is ``(pipeline, step position, state name)`` of state step r;
    ``flink_keys[state][i]`` is the Flink key of key index i; ``sinks[p]`` is
    the sink index of pipeline p (pipelines that end in ``done()`` have none);
    ``fingerprint`` is the plan's, so an operator that loads a different
    application fails at once instead of computing something else.
    """

    module: str
    args: tuple
    routes: tuple
    flink_keys: dict
    sinks: dict
    fingerprint: str

    def tag(self, state_name: str) -> OutputTag:
        return OutputTag(f"to state {state_name}", ROUTED)


def _subtask(context: RuntimeContext) -> str:
    """`` #i`` for subtask i, when PyFlink's thread mode can tell (2.3 cannot: it calls a
    method Flink 2 removed)."""
    try:
        return f" #{context.get_index_of_this_subtask()}"
    except Exception:
        return ""


def flink_key(record: tuple) -> int:
    """The key_by selector: the placed Flink key a routed record carries."""
    return record[0]


class _Stage:
    """Loads the application and keeps the per-batch output buffers of one operator."""

    def __init__(self, wiring: Wiring) -> None:
        self.wiring = wiring

    def _load(self, context: RuntimeContext, role: str) -> None:
        wiring = self.wiring
        module, plan = load_plan(wiring.module, list(wiring.args))
        if plan.fingerprint() != wiring.fingerprint:
            raise ApplicationError(
                f"module '{wiring.module}' on this TaskManager builds a different application "
                f"(fingerprint {plan.fingerprint()}, the job was built from {wiring.fingerprint}); "
                f"ship the same module to every host"
            )
        self.plan = plan
        self.callbacks = Callbacks(f"{role}{_subtask(context)}", "log")
        self._route_of = {(p, pos): r for r, (p, pos, _) in enumerate(wiring.routes)}
        self._tags = {name: wiring.tag(name) for name in wiring.flink_keys}
        self._batches: list[tuple[int, int, list]] = []
        self._sink_parts: list[tuple[int, list]] = []
        placement = Placement(
            (HERE, ELSEWHERE),
            tuple((name, (ELSEWHERE,) * len(keys)) for name, keys in plan.state_keys().items()),
        )
        self.topology = LocalTopology(
            plan,
            HERE,
            placement,
            self.callbacks,
            sink_for=self._sink_for,
            forward_to=self._forward_to,
            serializers=serializers(module),
        )
        self._raw_ints = ints_round_trip(serializers(module))  # the runner's probe

    def close(self) -> None:
        """The operator ends (or restarts): the dropped-message counts, as machida prints them."""
        callbacks = getattr(self, "callbacks", None)
        if callbacks is not None:
            callbacks.summarise(force=True)

    def _sink_for(self, p: int):
        parts: list = []
        sink = self.wiring.sinks.get(p)
        if sink is not None:
            self._sink_parts.append((sink, parts))
        return parts.append

    def _forward_to(self, owner: str, route: tuple):
        p, pos, key_index = route
        messages: list = []
        self._batches.append((self._route_of[(p, pos)], key_index, messages))
        return messages.append

    def _flush(self) -> Iterator:
        """Everything buffered while handling one record: one output per key and per sink."""
        for r, key_index, messages in self._batches:
            if messages:
                p, _, state_name = self.wiring.routes[r]
                payload = batch.encode(messages, self._hop_out(p), self._raw_ints)
                messages.clear()
                key = self.wiring.flink_keys[state_name][key_index]
                yield self._tags[state_name], (key, r, key_index, payload)
        for sink, parts in self._sink_parts:
            if parts:
                data = b"".join(parts)
                parts.clear()
                yield sink, data
        self.callbacks.summarise()

    def _hop_out(self, p: int):
        hop_out = self.topology.hop_out
        return lambda message: hop_out(message, p)


class SourceStage(_Stage, ProcessFunction):
    """Decode, stateless steps and ``partition`` for one pipeline's source stream."""

    def __init__(self, wiring: Wiring, pipeline: int) -> None:
        super().__init__(wiring)
        self.pipeline = pipeline

    def open(self, runtime_context: RuntimeContext) -> None:
        self._load(runtime_context, f"source {self.pipeline}")
        self._connections: dict = {}
        self._peers: dict[int, str] = {}

    def process_element(self, value: bytes, ctx: ProcessFunction.Context) -> Iterator:
        for kind, connection, body in split_entries(value):
            if kind == FRAMES:
                self._connection(connection).push_payloads(split_frames(body))
            elif kind == OPENED:
                self._peers[connection] = bytes(body).decode("utf-8", "replace")
            elif kind == CLOSED:
                self._connections.pop(connection, None)
                self._peers.pop(connection, None)
        yield from self._flush()

    def _connection(self, connection: int):
        found = self._connections.get(connection)
        if found is None:
            peer = self._peers.get(connection, f"connection {connection}")
            found = self.topology.source_connection(self.pipeline, peer)
            self._connections[connection] = found
        return found


class StateStage(_Stage, KeyedProcessFunction):
    """One state (all the steps that use its name), keyed by its keys, state in Flink."""

    def __init__(self, wiring: Wiring, state_name: str) -> None:
        super().__init__(wiring)
        self.state_name = state_name

    def open(self, runtime_context: RuntimeContext) -> None:
        self._load(runtime_context, f"state {self.state_name!r}")
        # The bytes of the module's serialize(). PyFlink's thread mode cannot keep a
        # byte[] in state (it converts it to a tuple of ints, and fails on an empty
        # state), so the bytes are kept as a pickled bytes object.
        self._value = runtime_context.get_state(
            ValueStateDescriptor("machida state", Types.PICKLED_BYTE_ARRAY())
        )
        self._states = self.topology.states[self.state_name]
        self._builder = next(
            step.builder
            for p, pos, name in self.wiring.routes
            if name == self.state_name
            for step in [self.plan.pipelines[p].steps[pos]]
        )
        self._apply = {
            r: self.topology.arrival(p, pos) for r, (p, pos, _) in enumerate(self.wiring.routes)
        }
        self._hop_in = {
            r: (lambda data, p=p: self.topology.hop_in(data, p))
            for r, (p, _, _) in enumerate(self.wiring.routes)
        }

    def process_element(self, value: tuple, ctx: KeyedProcessFunction.Context) -> Iterator:
        _, r, key_index, payload = value
        state = self._live(key_index, r)
        apply = self._apply[r]
        for message in batch.decode(payload, self._hop_in[r]):
            apply(key_index, message)
        data = self._hop_out(self.wiring.routes[r][0])(state)
        if data is not None:
            self._value.update(data)
        yield from self._flush()

    def _live(self, key_index: int, r: int) -> Any:
        """The key's state object: kept between batches, read from Flink state after a (re)start."""
        states = self._states
        if key_index in states:
            return states[key_index]
        stored = self._value.value()
        if stored is None:
            state = self._build(key_index)
        else:
            ok, state = self.topology.hop_in(bytes(stored), self.wiring.routes[r][0])
            if not ok:
                raise ApplicationError(
                    f"the checkpointed state of key index {key_index} of state "
                    f"'{self.state_name}' cannot be deserialized; see the error above"
                )
        states[key_index] = state
        return state

    def _build(self, key_index: int) -> Any:
        """A key's first state, as LocalTopology builds one: a failure fails the task."""
        what = f"key index {key_index} of state '{self.state_name}'"
        return build_state(self._builder, what, self.topology.callbacks)
