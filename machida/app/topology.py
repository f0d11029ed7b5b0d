"""One worker's share of the application: its states and its steps, compiled to calls.

:class:`LocalTopology` is the single place that carries a message through the
user's objects: decode, the stateless steps, ``partition``, the state
computation, later steps, and ``encode``. The runner and the in-process driver
both use it, so they behave the same by construction. Each pipeline is compiled
once into a chain of small closures (one per step), which keeps the per-message
cost to the user's own calls plus a function call per step; the most common
shape (at most one stateless step, then a state step, then the sink) is carried
by the loops of :mod:`machida.app.fused` instead, without those calls. A message for a key
owned by another worker goes to the sender ``forward_to(owner, route)`` gave
for that key (the runner gives a list's ``append``, so a forward is one C
call); one arriving from another worker enters through
:meth:`LocalTopology.arrival`. Encoded output goes to ``sink_for(pipeline)``;
with ``sink_keys`` (exactly-once output) each output goes with the index of
the key whose state step last carried its message (:data:`NO_KEY` in a
pipeline without one), which names the stream it is numbered in. Failures of
user code go to :class:`machida.app.callbacks.Callbacks`.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable

from machida.app.callbacks import (
    Callbacks,
    as_bytes,
    build_state,
    fn_label,
    label,
    serialized,
    step_name,
)
from machida.app.fused import Route, shape_of, source_loop, state_loop
from machida.app.plan import U64_MASK, AppPlan, Computation, Placement, StatePartition
from machida.metrics.stats import Stats, StepStats
from machida.wire.boundary import MAX_MESSAGE
from machida.wire.exactly_once import NO_KEY
from machida.wire.source import SourceFramer

# sink_for(pipeline_index) -> out: where a pipeline's encoded output goes. With
# sink_values, out(value_given_to_encoder, bytes_or_None) is called for every
# output; with sink_keys, out((key_index, bytes)) for bytes; otherwise out(bytes) only
# for bytes (the runner passes list.append).
SinkFor = Callable[[int], Callable]
# forward_to(owner_worker, route) -> send(message): where messages for a key on
# another worker go; route is (pipeline_index, step_position, key_index).
ForwardTo = Callable[[str, tuple], Callable[[Any], None]]
# persist(state_name, key_index, persist_flag) after each state call (resilience)
PersistFn = Callable[[str, int, Any], None]
# the stateless step instances of one source connection, by position, with their counts
Made = dict[int, tuple[Any, StepStats]]


class LocalTopology:
    """The states a worker owns and the compiled steps it runs, for every pipeline."""

    def __init__(
        self,
        plan: AppPlan,
        worker: str,
        placement: Placement,
        callbacks: Callbacks,
        sink_for: SinkFor,
        forward_to: ForwardTo,
        serializers: tuple[Callable, Callable] | None = None,
        sink_values: bool = False,
        persist: PersistFn | None = None,
        stats: Stats | None = None,
        sink_keys: bool = False,
        fused: bool = True,
    ) -> None:
        self.plan = plan
        # whether the common shape runs in the loops of machida.app.fused (False: always the
        # chain of closures, which the loops are tested against)
        self.fused = fused
        self.stats = stats if stats is not None else Stats(worker)
        self.worker = worker
        self.placement = placement
        self.callbacks = callbacks
        self._sink_for = sink_for
        self._sink_values = sink_values
        self._forward_to = forward_to
        self._persist = persist
        # per pipeline, the key index of the output being emitted (exactly-once output only)
        self._emit_keys = [[NO_KEY] for _ in plan.pipelines] if sink_keys else None
        if serializers is None:
            import wallaroo

            serializers = (wallaroo.serialize, wallaroo.deserialize)
        self._serialize, self._deserialize = serializers
        # the states this worker holds, by state name and key index; normally those it owns,
        # and during a change of placement also those it is handing over
        self.states: dict[str, dict[int, Any]] = {}
        self._builders: dict[str, Any] = {}
        self.state_routes: dict[str, tuple[int, int]] = {}  # state -> its first (p, pos)
        for p, pipeline in enumerate(plan.pipelines):
            for pos, step in enumerate(pipeline.steps):
                if isinstance(step, StatePartition):
                    self._builders.setdefault(step.state_name, step.builder)
                    self.state_routes.setdefault(step.state_name, (p, pos))
                    self.states.setdefault(step.state_name, {})
        self.build_missing()
        self._arrivals: dict[tuple[int, int], Callable[[int, Any], None]] = {}
        self._arrival_runs: dict[tuple[int, int], Callable[[int, list], None]] = {}
        self._owned: dict[tuple[int, int], dict[int, Any]] = {}  # (p, pos) -> its held states
        # (p, pos) -> the route table the compiled state step reads, changed in place by
        # apply_placement: state name, whether each key is local, where each key's messages go
        # otherwise, and the owner each key was routed to
        self._routes: dict[tuple[int, int], tuple[str, list[bool], list[Any], list[Any]]] = {}
        self._matched: dict[tuple[int, int], list[bool]] = {}
        self._state_counts: dict[tuple[int, int], StepStats] = {}  # (p, pos) of a state step
        # the loops serve unless the driver asks the sink for the values it encodes
        self._loops = fused and not sink_values
        self._worker_chains = [self._compile_worker_part(i) for i in range(len(plan.pipelines))]

    # -- states ---------------------------------------------------------------------------

    def build_missing(self) -> list[tuple[str, int]]:
        """``build()`` a state for every key this worker owns and does not hold, in key-list
        order (all of them at start); the keys it built."""
        built = []
        for state_name, indexes in self.placement.owned_by(self.worker).items():
            states = self.states[state_name]
            for index in indexes:
                if index not in states:
                    what = f"state '{state_name}' on worker '{self.worker}'"
                    states[index] = build_state(self._builders[state_name], what, self.callbacks)
                    built.append((state_name, index))
        return built

    def take_state(self, state_name: str, key_index: int) -> Any:
        """Stop holding a key's state (it is handed over): the state."""
        return self.states[state_name].pop(key_index)

    def adopt_state(self, state_name: str, key_index: int, state: Any) -> None:
        """Hold a key's state handed over by another worker (replacing any held)."""
        self.states[state_name][key_index] = state

    def state_of(self, p: int, pos: int) -> str:
        """The name of the state the step at ``pos`` of pipeline ``p`` computes on."""
        return self._routes[(p, pos)][0]

    def state_out(self, state_name: str, state: Any) -> bytes | None:
        """A state as the module's ``serialize`` makes it, to hand it over; None if that
        failed (reported like any failing serialize: the new owner builds a fresh state)."""
        p = self.state_routes[state_name][0]
        return self.hop_out(state, p, f"handing over state '{state_name}'")

    def apply_placement(self, placement: Placement) -> None:
        """Route every key as ``placement`` says from now on (the states held do not change:
        the data plane hands over and adopts them)."""
        self.placement = placement
        for route in self._routes:
            self._route_keys(route)

    def _route_keys(self, route: tuple[int, int]) -> None:
        """Fill the route table of the state step at ``route`` from the current placement."""
        state_name, local, send, dest = self._routes[route]
        for i, owner in enumerate(self.placement.owners_of(state_name)):
            if owner != dest[i]:
                dest[i], local[i] = owner, owner == self.worker
                send[i] = None if local[i] else self._forward_to(owner, (*route, i))

    # -- compiling ------------------------------------------------------------------------

    @staticmethod
    def first_state(steps: tuple) -> int:
        """Position of the first state step, or ``len(steps)`` when there is none."""
        for pos, step in enumerate(steps):
            if isinstance(step, StatePartition):
                return pos
        return len(steps)

    def output_state(self, p: int) -> str | None:
        """The state whose keys number pipeline ``p``'s output streams: that of its last
        state step (None without one)."""
        states = [s.state_name for s in self.plan.pipelines[p].steps
                  if isinstance(s, StatePartition)]  # fmt: skip
        return states[-1] if states else None

    def _compile_worker_part(self, p: int) -> Callable[[Any], None]:
        """The chain from the first state step on, with one instance per worker."""
        steps = self.plan.pipelines[p].steps
        return self._chain(p, self.first_state(steps), self._emitter(p), "")

    def _chain(self, p: int, start: int, tail: Callable, context: str,
               made: Made | None = None) -> Callable[[Any], None]:  # fmt: skip
        """Compile steps ``start..end`` of pipeline ``p`` in front of ``tail`` (with the
        stateless step instances ``made`` by position, if given; new ones otherwise)."""
        steps = self.plan.pipelines[p].steps
        stop = len(steps) if start == self.first_state(steps) else self.first_state(steps)
        nxt = tail
        for pos in range(stop - 1, start - 1, -1):
            step = steps[pos]
            if isinstance(step, Computation):
                made_here = made.get(pos) if made is not None else None
                nxt = self._stateless(p, made_here or self._instance(p, step), nxt, context)
            else:
                nxt = self._state_step(p, pos, step, nxt)
        return nxt

    def _instance(self, p: int, step: Computation) -> tuple[Any, StepStats]:
        """A new instance of a stateless step, and the counts of its step."""
        obj = step.cls()
        return obj, self.stats.step(self.plan.pipelines[p].name, step_name(obj))

    def _stateless(self, p: int, made: tuple[Any, StepStats], nxt: Callable,
                   context: str) -> Callable:  # fmt: skip
        obj, counts = made
        pname = self.plan.pipelines[p].name
        cb = self.callbacks
        multi = hasattr(obj, "compute_multi")
        method = obj.compute_multi if multi else obj.compute
        name = label(obj, "compute_multi" if multi else "compute")

        def run_multi(msg: Any) -> None:
            counts.messages_in += 1
            try:
                out = method(msg)
            except BaseException as err:
                cb.failed(name, err, pname, context)
                return
            if out is None:
                return
            if out.__class__ is not list and not isinstance(out, list):
                cb.invalid(name, out, pname, context)
                return
            counts.messages_out += len(out)
            for item in out:
                nxt(item)

        def run_one(msg: Any) -> None:
            counts.messages_in += 1
            try:
                out = method(msg)
            except BaseException as err:
                cb.failed(name, err, pname, context)
                return
            if out is not None:
                counts.messages_out += 1
                nxt(out)

        return run_multi if multi else run_one

    def _state_step(self, p: int, pos: int, step: StatePartition, nxt: Callable) -> Callable:
        counts = self._state_counts[(p, pos)] = self.stats.step(
            self.plan.pipelines[p].name, step_name(step.computation)
        )
        apply = self._state_apply(p, step, nxt, counts)
        steps = self.plan.pipelines[p].steps
        last = all(not isinstance(s, StatePartition) for s in steps[pos + 1 :])
        if self._emit_keys is not None and last:
            apply = _keyed(apply, self._emit_keys[p])
        self._arrivals[(p, pos)] = apply
        self._arrival_runs[(p, pos)] = self._state_loop(p, pos, step, counts) or _each(apply)
        self._owned[(p, pos)] = self.states[step.state_name]
        n = len(step.keys)
        local: list[bool] = [False] * n
        send: list[Any] = [None] * n
        self._routes[(p, pos)] = (step.state_name, local, send, [None] * n)
        self._route_keys((p, pos))
        cb, pname = self.callbacks, self.plan.pipelines[p].name
        if step.partition_function is None:
            return lambda msg: apply(0, msg) if local[0] else send[0](msg)
        index = {key: i for i, key in enumerate(step.keys)}
        partition = step.partition_function.partition
        name = label(step.partition_function, "partition")
        state_name, u64, keys = step.state_name, step.u64, step.keys
        # whether any key has been in the list (the first miss says so); shared with the
        # source loop of machida.app.fused
        matched = self._matched[(p, pos)] = [False]

        def route(msg: Any) -> None:
            try:
                key: Any = partition(msg)
            except BaseException as err:
                cb.failed(name, err, pname, f"state '{state_name}'")
                return
            if u64:
                if not isinstance(key, numbers.Real) or isinstance(key, bool):
                    cb.invalid(name, key, pname, f"state '{state_name}' needs a u64 key")
                    return
                key = int(key) & U64_MASK  # type: ignore[call-overload]
            try:
                i = index.get(key)
            except TypeError:
                cb.invalid(name, key, pname, f"state '{state_name}' needs a hashable key")
                return
            if i is None:
                cb.unknown_key(name, key, state_name, () if matched[0] else keys)
                return
            matched[0] = True
            if local[i]:
                apply(i, msg)
            else:
                send[i](msg)

        return route

    def _state_loop(self, p: int, pos: int, step: StatePartition,
                    counts: StepStats) -> Callable[[int, list], None] | None:  # fmt: skip
        """One loop for the runs that arrive for the state step at ``pos`` if it is the last
        step, computes one result per message and the sink is not asked for the values
        (:mod:`machida.app.fused`); else None."""
        pipeline = self.plan.pipelines[p]
        if pos != len(pipeline.steps) - 1 or pipeline.sink is None:
            return None
        if hasattr(step.computation, "compute_multi"):
            return None
        if not self._loops:
            return None
        keyed, states = self._emit_keys is not None, self.states[step.state_name]
        return state_loop(pipeline, step, states, self.callbacks, counts, self._sink_for(p),
                          self._persist, keyed)  # fmt: skip

    def _state_apply(self, p: int, step: StatePartition, nxt: Callable,
                     counts: StepStats) -> Callable:  # fmt: skip
        """``apply(key_index, msg)``: the state computation on this worker's state."""
        comp = step.computation
        multi = hasattr(comp, "compute_multi")
        method = comp.compute_multi if multi else comp.compute
        name = label(comp, "compute_multi" if multi else "compute")
        states = self.states[step.state_name]
        state_name, keys = step.state_name, step.keys
        pname = self.plan.pipelines[p].name
        cb, persist = self.callbacks, self._persist

        def apply(i: int, msg: Any) -> None:
            counts.messages_in += 1
            try:
                r = method(msg, states[i])
            except BaseException as err:
                cb.failed(name, err, pname, f"state '{state_name}', key {keys[i]!r}")
                return
            if (r.__class__ is not tuple and not isinstance(r, tuple)) or len(r) < 2:
                cb.invalid(name, r, pname, f"state '{state_name}', key {keys[i]!r}")
                return
            if persist is not None:
                persist(state_name, i, r[1])
            result = r[0]
            if result is None:
                return
            if not multi:
                counts.messages_out += 1
                nxt(result)
            elif isinstance(result, list):
                counts.messages_out += len(result)
                for item in result:
                    nxt(item)
            else:
                cb.invalid(name, result, pname, f"state '{state_name}', key {keys[i]!r}")

        return apply

    def _emitter(self, p: int) -> Callable[[Any], None]:
        pipeline = self.plan.pipelines[p]
        if pipeline.sink is None:
            return lambda value: None
        encode = pipeline.sink.encoder.encode
        name = label(pipeline.sink.encoder, "encode")
        out, cb, pname = self._sink_for(p), self.callbacks, pipeline.name
        with_values = self._sink_values
        if self._emit_keys is not None:  # exactly-once: each output goes with its key index
            out, with_values = _with_key(out, self._emit_keys[p]), False

        def emit(value: Any) -> None:
            try:
                data = encode(value)
            except BaseException as err:
                cb.failed(name, err, pname, "sink")
                return
            if data.__class__ is not bytes and data is not None:
                raw, data = data, as_bytes(data)
                if data is None:
                    cb.invalid(name, raw, pname, "sink")
                    return
            if with_values:
                out(value, data)
            elif data:
                out(data)

        return emit

    # -- entry points ---------------------------------------------------------------------

    def source_connection(self, p: int, peer: str) -> SourceConnection:
        """A new source connection of pipeline ``p`` (initializer only): fresh step instances."""
        steps = self.plan.pipelines[p].steps
        first = self.first_state(steps)
        tail = self._worker_chains[p] if first < len(steps) else self._emitter(p)
        made = {pos: self._instance(p, steps[pos]) for pos in range(first)}  # this connection's
        entry = self._chain(p, 0, tail, f"peer {peer}", made) if first > 0 else tail
        return SourceConnection(self, p, peer, entry, self._source_loop(p, peer, made))

    def _source_loop(self, p: int, peer: str, made: Made) -> Callable[[list[bytes]], None] | None:
        """One loop for a source connection of pipeline ``p`` (with the stateless step
        instances ``made`` for it) if its shape allows and the sink is not asked for the values
        (:mod:`machida.app.fused`); else None."""
        pipeline = self.plan.pipelines[p]
        shape = shape_of(pipeline)
        if shape is None or not self._loops:
            return None
        stateless, step_counts = made[0] if shape.stateless is not None else (None, None)
        state, pos = shape.state, shape.state_pos
        _, local, send, _ = self._routes[(p, pos)]
        route = Route(self.states[state.state_name], local, send, self._matched[(p, pos)])
        counts, keyed = (step_counts, self._state_counts[(p, pos)]), self._emit_keys is not None
        return source_loop(pipeline, state, stateless, route, self.callbacks, counts,
                           self._sink_for(p), self._persist, peer, keyed)  # fmt: skip

    def owns(self, p: int, pos: int, key_index: int) -> bool:
        """Whether key ``key_index`` of the state step at ``pos`` of pipeline ``p`` is here."""
        owned = self._owned.get((p, pos))
        return owned is not None and key_index in owned

    def arrival_run(self, p: int, pos: int) -> Callable[[int, list], None]:
        """``run(key_index, messages)`` of the state step at ``pos``: :meth:`arrival` for each
        message of a run that arrived from another worker."""
        return self._arrival_runs[(p, pos)]

    def arrival(self, p: int, pos: int) -> Callable[[int, Any], None]:
        """``apply(key_index, msg)`` of the state step at ``pos``, for messages from another
        worker (a run of them at a time)."""
        return self._arrivals[(p, pos)]

    def hop_out(self, msg: Any, p: int, context: str = "") -> bytes | None:
        """Serialise a message leaving this worker; ``None`` if that failed (it is dropped)."""
        name, pname = fn_label(self._serialize), self.plan.pipelines[p].name
        try:
            data = self._serialize(msg)
        except BaseException as err:
            self.callbacks.failed(name, err, pname, context)
            return None
        if data.__class__ is not bytes:
            result, data = data, serialized(data)
            if data is None:
                self.callbacks.invalid(name, result, pname, context)
                return None
        if len(data) > MAX_MESSAGE:
            self.callbacks.invalid(name, data, pname, context or f"more than the {MAX_MESSAGE} "
                                   "bytes a message may have to cross workers")  # fmt: skip
            return None
        return data

    def hop_in(self, data: bytes, p: int) -> tuple[bool, Any]:
        """Deserialise a message from another worker: ``(ok, message)``."""
        try:
            return True, self._deserialize(data)
        except BaseException as err:
            self.callbacks.failed(fn_label(self._deserialize), err, self.plan.pipelines[p].name)
            return False, None


class SourceConnection:
    """One source connection: its framing state and its own stateless step instances."""

    __slots__ = ("_counts", "_decode", "_decode_name", "_entry", "_loop", "_reported", "framer",
                 "p", "peer", "topology")  # fmt: skip

    def __init__(self, topology: LocalTopology, p: int, peer: str, entry: Callable,
                 loop: Callable[[list[bytes]], None] | None = None) -> None:  # fmt: skip
        source = topology.plan.pipelines[p].source
        self.topology = topology
        self.p = p
        self.peer = peer
        self._entry = entry
        self._loop = loop
        self._decode = source.decoder.decode
        self._decode_name = label(source.decoder, "decode")
        self._counts = topology.stats.pipeline(topology.plan.pipelines[p].name)
        self.framer = SourceFramer(
            source.decoder, source.header_length, label(source.decoder, "payload_length")
        )
        self._reported = False

    @property
    def one_loop(self) -> bool:
        """Whether this connection's payloads go through one loop
        (:func:`machida.app.fused.source_loop`) rather than the chain of closures."""
        return self._loop is not None

    @property
    def failed(self) -> bool:
        """The framing broke; the caller must close the connection."""
        return self.framer.error is not None

    def push(self, msg: Any) -> None:
        """A message already decoded (the driver's ``feed``)."""
        self._counts.messages_in += 1
        self._entry(msg)

    def frames(self, data: bytes) -> list[bytes]:
        """The payloads of every complete frame in ``data`` (``payload_length`` per frame)."""
        framer = self.framer
        try:
            return framer.feed(data)
        except BaseException as err:  # the framer turns an Exception into framer.error
            self.topology.callbacks.fatal(framer.callback, err)
            raise

    def report_bad_frame(self) -> None:
        """If the framing broke, say so (once the frames before the bad one are processed)."""
        why = self.framer.error
        if why is not None and not self._reported:
            self._reported = True
            pname = self.topology.plan.pipelines[self.p].name
            self.topology.callbacks.bad_frame(why.callback, why.length, pname, self.peer, why.exc)

    def push_payloads(self, payloads: list[bytes]) -> None:
        self._counts.messages_in += len(payloads)
        if self._loop is not None:
            self._loop(payloads)
            return
        decode, entry, name = self._decode, self._entry, self._decode_name
        cb = self.topology.callbacks
        for payload in payloads:
            try:
                msg = decode(payload)
            except BaseException as err:
                cb.failed(name, err, self.topology.plan.pipelines[self.p].name, f"peer {self.peer}")
                continue
            entry(msg)

    def close(self) -> int:
        """The peer closed: warn about a partial frame; returns the bytes discarded."""
        left = self.framer.pending
        if left and self.framer.error is None:
            pname = self.topology.plan.pipelines[self.p].name
            print(
                f"WARNING: source connection from {self.peer} closed in the middle of a frame; "
                f"{left} byte(s) discarded [pipeline '{pname}']",
                file=self.topology.callbacks.stream,
                flush=True,
            )
        return left


def _each(apply: Callable[[int, Any], None]) -> Callable[[int, list], None]:
    """``apply`` for each message of a run."""

    def run(i: int, messages: list) -> None:
        for msg in messages:
            apply(i, msg)

    return run


def _keyed(apply: Callable[[int, Any], None], key: list[int]) -> Callable[[int, Any], None]:
    """``apply`` that first notes its key index in ``key``, where the emitter reads it."""

    def keyed(i: int, msg: Any) -> None:
        key[0] = i
        apply(i, msg)

    return keyed


def _with_key(out: Callable[[Any], None], key: list[int]) -> Callable[[bytes], None]:
    """``out`` given ``(key index, bytes)``: the key index the emitter reads in ``key``."""

    def keyed_out(data: bytes) -> None:
        out((key[0], data))

    return keyed_out
