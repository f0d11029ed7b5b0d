"""The most common pipeline shape, carried in one loop per batch of messages.

Most applications read a source, run at most one stateless step, partition
into a state step and send what it returns to the sink (sequence_window does).
:class:`~machida.app.topology.LocalTopology` carries each message through a
chain of closures, one Python call per step; for this shape two loops do the
same work without them, which is most of the runner's own cost per message:

* :func:`source_loop`, on the worker that owns the source, carries a slice of
  payloads through decode, the stateless step, ``partition``, and for the keys
  held here the state computation and ``encode``; messages for a key on
  another worker go to the same senders, read from the route tables the
  topology changes in place when the placement changes;
* :func:`state_loop` carries a run of messages that arrived from another
  worker for one key through the state computation and ``encode``.

Both make the same user calls in the same order, with the same checks (and with
exactly-once output tag each output with its key index, as the chain does), and
report failures to the same :class:`~machida.app.callbacks.Callbacks` in the
same words as the chain (``tests/test_fused.py`` runs both on the same input
and compares everything they do); the step counts are added once per batch.
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any, Callable

from machida.app.callbacks import Callbacks, as_bytes, label
from machida.app.plan import U64_MASK, Computation, Pipeline, StatePartition
from machida.metrics.stats import StepStats


@dataclass(frozen=True)
class Shape:
    """A pipeline :func:`source_loop` can carry: its optional stateless step and its one
    state step, whose results go to the sink."""

    stateless: Computation | None
    state: StatePartition
    state_pos: int


def shape_of(pipeline: Pipeline) -> Shape | None:
    """The shape of ``pipeline`` if one loop can carry it: ``[step] -> state -> sink``, the
    state step partitioned and computing one result per message (``compute``); else None."""
    steps = pipeline.steps
    if pipeline.sink is None or not 1 <= len(steps) <= 2:
        return None
    state, stateless = steps[-1], steps[0] if len(steps) == 2 else None
    if not isinstance(state, StatePartition) or state.partition_function is None:
        return None
    if hasattr(state.computation, "compute_multi"):
        return None
    if stateless is not None and not isinstance(stateless, Computation):
        return None
    return Shape(stateless, state, len(steps) - 1)


@dataclass(frozen=True)
class Route:
    """What the topology keeps for one state step, shared with the loop: the states held by
    key index, whether each key is here, the sender for each key that is not, and whether a
    key has matched yet (the first miss lists the keys)."""

    states: dict[int, Any]
    local: list[bool]
    send: list[Any]
    matched: list[bool]


def source_loop(pipeline: Pipeline, state: StatePartition, stateless: Any, route: Route,
                callbacks: Callbacks, counts: tuple[StepStats | None, StepStats],
                out: Callable[[Any], None], persist: Callable | None, peer: str,
                keyed: bool = False) -> Callable[[list[bytes]], None]:  # fmt: skip
    """``run(payloads)``: each payload decoded and carried to the sink or to another worker,
    as the chain of closures would, for a pipeline of :func:`shape_of` whose state step is
    ``state``. ``stateless`` is this connection's instance of the
    stateless step (None without one); ``counts`` the step counts of both steps; with
    ``keyed`` (exactly-once output) each output goes to ``out`` as ``(key index, bytes)``."""
    cb, pname, context = callbacks, pipeline.name, f"peer {peer}"
    decoder = pipeline.source.decoder
    decode, decode_name = decoder.decode, label(decoder, "decode")
    multi = stateless is not None and hasattr(stateless, "compute_multi")
    if stateless is None:
        step, step_name = None, ""
    else:
        step = stateless.compute_multi if multi else stateless.compute
        step_name = label(stateless, "compute_multi" if multi else "compute")
    partition, partition_name = (
        state.partition_function.partition,
        label(state.partition_function, "partition"),
    )
    compute, compute_name = state.computation.compute, label(state.computation, "compute")
    assert pipeline.sink is not None
    encoder = pipeline.sink.encoder
    encode, encode_name = encoder.encode, label(encoder, "encode")
    state_name, keys, u64 = state.state_name, state.keys, state.u64
    index = {key: i for i, key in enumerate(keys)}
    states, local, send, matched = route.states, route.local, route.send, route.matched
    step_counts, state_counts = counts
    where = f"state '{state_name}'"

    def run(payloads: list[bytes]) -> None:
        step_in = step_out = state_in = state_out = 0
        hit = False  # whether a key matched in this run (matched[0] is set once, at the end)
        try:
            for payload in payloads:
                try:
                    msg = decode(payload)
                except BaseException as err:
                    cb.failed(decode_name, err, pname, context)
                    continue
                if step is None:
                    items: Any = (msg,)
                else:
                    step_in += 1
                    try:
                        items = step(msg)
                    except BaseException as err:
                        cb.failed(step_name, err, pname, context)
                        continue
                    if items is None:
                        continue
                    if not multi:
                        step_out += 1
                        items = (items,)
                    elif items.__class__ is not list and not isinstance(items, list):
                        cb.invalid(step_name, items, pname, context)
                        continue
                    else:
                        step_out += len(items)
                for item in items:
                    try:
                        key: Any = partition(item)
                    except BaseException as err:
                        cb.failed(partition_name, err, pname, where)
                        continue
                    if u64:
                        if not isinstance(key, numbers.Real) or isinstance(key, bool):
                            cb.invalid(partition_name, key, pname, f"{where} needs a u64 key")
                            continue
                        key = int(key) & U64_MASK  # type: ignore[call-overload]
                    try:
                        i = index[key]
                    except KeyError:
                        unmatched = () if hit or matched[0] else keys
                        cb.unknown_key(partition_name, key, state_name, unmatched)
                        continue
                    except TypeError:
                        cb.invalid(partition_name, key, pname, f"{where} needs a hashable key")
                        continue
                    hit = True
                    if not local[i]:
                        send[i](item)
                        continue
                    state_in += 1
                    try:
                        r = compute(item, states[i])
                    except BaseException as err:
                        cb.failed(compute_name, err, pname, f"{where}, key {keys[i]!r}")
                        continue
                    if (r.__class__ is not tuple and not isinstance(r, tuple)) or len(r) < 2:
                        cb.invalid(compute_name, r, pname, f"{where}, key {keys[i]!r}")
                        continue
                    if persist is not None:
                        persist(state_name, i, r[1])
                    result = r[0]
                    if result is None:
                        continue
                    state_out += 1
                    try:
                        data = encode(result)
                    except BaseException as err:
                        cb.failed(encode_name, err, pname, "sink")
                        continue
                    if data.__class__ is not bytes and data is not None:
                        raw, data = data, as_bytes(data)
                        if data is None:
                            cb.invalid(encode_name, raw, pname, "sink")
                            continue
                    if data:
                        out((i, data) if keyed else data)
        finally:
            if hit:
                matched[0] = True
            if step_counts is not None:
                step_counts.messages_in += step_in
                step_counts.messages_out += step_out
            state_counts.messages_in += state_in
            state_counts.messages_out += state_out

    return run


def state_loop(pipeline: Pipeline, state: StatePartition, states: dict[int, Any],
               callbacks: Callbacks, counts: StepStats, out: Callable[[Any], None],
               persist: Callable | None,
               keyed: bool = False) -> Callable[[int, list], None]:  # fmt: skip
    """``run(key_index, messages)``: the state computation and ``encode`` for each message of
    one key, as the chain of closures would (with ``keyed``, as in :func:`source_loop`)."""
    cb, pname = callbacks, pipeline.name
    compute, compute_name = state.computation.compute, label(state.computation, "compute")
    assert pipeline.sink is not None
    encoder = pipeline.sink.encoder
    encode, encode_name = encoder.encode, label(encoder, "encode")
    state_name, keys = state.state_name, state.keys

    def run(i: int, messages: list) -> None:
        state_in = state_out = 0
        try:
            for msg in messages:
                state_in += 1
                try:
                    r = compute(msg, states[i])
                except BaseException as err:
                    cb.failed(compute_name, err, pname, f"state '{state_name}', key {keys[i]!r}")
                    continue
                if (r.__class__ is not tuple and not isinstance(r, tuple)) or len(r) < 2:
                    cb.invalid(compute_name, r, pname, f"state '{state_name}', key {keys[i]!r}")
                    continue
                if persist is not None:
                    persist(state_name, i, r[1])
                result = r[0]
                if result is None:
                    continue
                state_out += 1
                try:
                    data = encode(result)
                except BaseException as err:
                    cb.failed(encode_name, err, pname, "sink")
                    continue
                if data.__class__ is not bytes and data is not None:
                    raw, data = data, as_bytes(data)
                    if data is None:
                        cb.invalid(encode_name, raw, pname, "sink")
                        continue
                if data:
                    out((i, data) if keyed else data)
        finally:
            counts.messages_in += state_in
            counts.messages_out += state_out

    return run
