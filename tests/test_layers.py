"""The import layers of machida, the tools and the Metrics UI, read from the source (AST).

The runner is built in ranked layers (see ``machida/__init__.py``), each of
which imports only layers ranked below it or its own modules:

0. errors, console, options, config, aio, lib (the foundation every program uses);
1. wire (the byte formats);
2. metrics, external (counters and the shells both engines share);
3. app (the application model);
4. durability (recovery files, event log, resilience);
5. runtime (one worker's data plane, flow control and asyncio channels);
6. cluster (the control plane);
7. process, testing, cli (what puts them together).

These tests fail on an import against that order, on an import cycle
anywhere, on a module that does no I/O loading asyncio or socket (directly or
through anything it imports), on the control plane reaching into the runtime,
and on the tools, the Metrics UI and machida-flink importing the runner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("machida", "wallaroo_tools", "metrics_ui", "machida_flink")
IO_MODULES = {"asyncio", "socket", "selectors", "ssl"}
# Modules that must stay free of I/O machinery, with everything they import.
NO_IO = (
    "machida.wire",
    "machida.app",
    "machida.metrics.stats",
    "machida.runtime.dataplane",
    "machida.runtime.exactly_once",
    "machida.runtime.flow",
    "machida.cluster.membership",
    "machida.cluster.quiescence",
    "machida.testing",
)
# The one deferred import of the runner: its command line loads the process only once its flags
# are good. (machida_flink defers what loads PyFlink and its JVM bridge, for the same reason.)
DEFERRED = {("machida.cli", "machida.process")}
RANKS = [
    ("machida.errors", "machida.console", "machida.options", "machida.config", "machida.aio",
     "machida.files", "machida.lib"),
    ("machida.wire",),
    ("machida.metrics", "machida.external"),
    ("machida.app",),
    ("machida.durability",),
    ("machida.runtime",),
    ("machida.cluster",),
    ("machida.process", "machida.testing", "machida.cli", "machida.__main__"),
]  # fmt: skip


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """Every module ``path`` imports, and whether the import is inside a function."""
    tree = ast.parse(path.read_text(), str(path))
    out = []
    for node in ast.walk(tree):
        deferred = node not in tree.body
        if isinstance(node, ast.Import):
            out += [(alias.name, deferred) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.append((node.module, deferred))
            out += [(f"{node.module}.{alias.name}", deferred) for alias in node.names]
    return out


def graph() -> dict[str, list[tuple[str, bool]]]:
    """Project module -> the project and standard modules it imports (existing names only)."""
    files = {module_name(p): p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")}
    edges = {}
    for name, path in files.items():
        seen = {}
        for target, deferred in imports(path):
            if target.split(".")[0] in PACKAGES:
                if target in files:
                    seen[target] = seen.get(target, True) and deferred
            elif target.split(".")[0] in IO_MODULES:
                seen[target.split(".")[0]] = deferred
        edges[name] = sorted(seen.items())
    return edges


GRAPH = graph()


def parents(name: str) -> list[str]:
    """Importing ``a.b.c`` runs ``a/__init__`` and ``a/b/__init__`` first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts)) if ".".join(parts[:i]) in GRAPH]


def reach(start: str) -> set[str]:
    """Everything importing ``start`` loads, package ``__init__`` files included."""
    todo, seen = [start, *parents(start)], set()
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        for target, _ in GRAPH.get(name, []):
            todo += [target, *parents(target)]
    return seen


def test_the_graph_sees_the_layers():
    assert "machida.runtime.dataplane" in GRAPH and "machida.cluster.initializer" in GRAPH
    assert ("machida.wire.boundary", False) in GRAPH["machida.runtime.dataplane"]
    assert ("asyncio", False) in GRAPH["machida.runtime.channels"]


def rank(name: str) -> int:
    """The layer of a module of machida (the package itself is above everything)."""
    for number, prefixes in enumerate(RANKS):
        if any(name == p or name.startswith(p + ".") for p in prefixes):
            return number
    if name == "machida":
        return len(RANKS)
    raise AssertionError(f"{name} is in no layer: give it one in RANKS")


def test_every_module_of_the_runner_is_in_a_layer():
    assert sorted({rank(name) for name in GRAPH if name.startswith("machida.")}) == list(
        range(len(RANKS))
    )


def test_no_module_imports_a_layer_above_its_own():
    upward = [
        f"{name} (layer {rank(name)}) imports {target} (layer {rank(target)})"
        for name, targets in GRAPH.items() if name.startswith("machida.")
        for target, late in targets
        if target.startswith("machida.") and rank(target) > rank(name)
        and (name, target) not in DEFERRED
    ]  # fmt: skip
    assert upward == []


def test_the_order_is_enforced_against_an_upward_import():
    """The check above sees an import that runs up, as the wire once imported the model."""
    assert rank("machida.wire.source") < rank("machida.app.callbacks")
    assert rank("machida.runtime.dataplane") < rank("machida.cluster.node")
    assert rank("machida.process") > rank("machida.cluster.initializer")


def test_there_is_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(name: str, path: list[str]) -> None:
        state[name] = 1
        for target, _ in GRAPH.get(name, []):
            if state.get(target) == 1:
                cycle = [*path[path.index(target) :], target] if target in path else [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target in GRAPH and target not in state:
                visit(target, [*path, target])
        state[name] = 2

    for name in GRAPH:
        if name not in state:
            visit(name, [name])


def test_only_the_command_line_defers_an_import():
    deferred = {(name, target) for name, targets in GRAPH.items() if name.startswith("machida.")
                for target, late in targets if late and target not in IO_MODULES}  # fmt: skip
    assert deferred == DEFERRED


@pytest.mark.parametrize("prefix", NO_IO)
def test_modules_without_io_load_neither_asyncio_nor_socket(prefix):
    modules = [name for name in GRAPH if name == prefix or name.startswith(prefix + ".")]
    assert modules
    for name in modules:
        loaded = reach(name) & IO_MODULES
        assert not loaded, f"{name} loads {sorted(loaded)}"


def test_the_control_plane_steers_a_node_and_never_reaches_into_the_runtime():
    for name in GRAPH:
        if name.startswith("machida.cluster"):
            runtime = sorted(m for m in reach(name) if m.startswith("machida.runtime"))
            assert not runtime, f"{name} imports {runtime}"


def test_the_tools_the_ui_and_flink_import_codecs_and_the_model_not_the_runner():
    runner = ("machida.runtime", "machida.cluster", "machida.cli", "machida.durability")
    for name in GRAPH:
        if name.startswith(("wallaroo_tools", "metrics_ui", "machida_flink")):
            used = sorted(m for m in reach(name) if m.startswith(runner))
            assert not used, f"{name} imports {used}"
