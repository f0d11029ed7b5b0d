"""The plan, translated into the shape of a Flink job (pure: no JVM, no I/O).

Each pipeline becomes an ingress source and a :class:`~machida_flink.stages.SourceStage`;
each state *name* becomes one keyed :class:`~machida_flink.stages.StateStage`,
fed by every step that uses that name (so pipelines sharing a state share its
keyed state, as in machida); all encoded output goes to one sink operator that
keeps a connection per sink address. Flink's DataStream graphs have no cycles,
so two states that feed each other (through different pipelines) are refused.
"""

from __future__ import annotations

from dataclasses import dataclass

from machida.app.plan import AppPlan, StatePartition
from machida.errors import ApplicationError


@dataclass(frozen=True)
class Shape:
    """``routes``: every state step as ``(pipeline, position, state name)``;
    ``order``: state names, each after the states that feed it; ``feeds``: for
    each state name, the states whose output goes on to it; ``first``: per
    pipeline, the state its source stage feeds (or None); ``sinks``: pipeline
    index to sink index; ``sink_addresses``: ``host:port`` per sink index.
    """

    routes: tuple
    order: tuple
    feeds: dict
    first: tuple
    sinks: dict
    sink_addresses: tuple


def shape(plan: AppPlan) -> Shape:
    routes = []
    edges: dict[str, set[str]] = {name: set() for name in plan.state_keys()}
    first = []
    for p, pipeline in enumerate(plan.pipelines):
        names = []
        for pos, step in enumerate(pipeline.steps):
            if isinstance(step, StatePartition):
                routes.append((p, pos, step.state_name))
                names.append(step.state_name)
        first.append(names[0] if names else None)
        for a, b in zip(names, names[1:]):
            edges[a].add(b)
    order = _topological(edges)
    feeds = {name: tuple(a for a in order if name in edges[a]) for name in order}
    sinks: dict[int, int] = {}
    addresses = []
    for p, pipeline in enumerate(plan.pipelines):
        if pipeline.sink is not None:
            sinks[p] = len(addresses)
            addresses.append(f"{pipeline.sink.host}:{pipeline.sink.port}")
    return Shape(tuple(routes), order, feeds, tuple(first), sinks, tuple(addresses))


def _topological(edges: dict[str, set[str]]) -> tuple:
    """State names ordered so that each comes after every state feeding it."""
    order: list[str] = []
    marks: dict[str, str] = {}

    def visit(name: str, path: list[str]) -> None:
        if marks.get(name) == "done":
            return
        if marks.get(name) == "open":
            cycle = " -> ".join(f"'{n}'" for n in [*path[path.index(name) :], name])
            raise ApplicationError(
                f"states {cycle} feed each other; a Flink job's graph cannot have a cycle, "
                f"so this application cannot run on machida-flink (it runs on machida)"
            )
        marks[name] = "open"
        for nxt in sorted(edges[name]):
            visit(nxt, [*path, name])
        marks[name] = "done"
        order.append(name)

    for name in edges:
        visit(name, [])
    return tuple(reversed(order))
