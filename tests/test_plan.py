"""Loading applications and building plans: the good path and every malformed case."""

from __future__ import annotations

import sys

import pytest

from machida.app.loader import LIB_DIR, load_plan, prepare_sys_path
from machida.app.plan import Computation, StatePartition
from machida.config import app_args
from machida.errors import ApplicationError

ARGS = ["machida", "--in", "127.0.0.1:7010", "--out", "127.0.0.1:7002"]

HEADER = """
import struct
import wallaroo

class Dec(object):
    def header_length(self): return 4
    def payload_length(self, bs): return struct.unpack(">I", bs)[0]
    def decode(self, bs): return bs

class Step(object):
    def compute(self, data): return data

class Comp(object):
    def compute(self, data, state): return (data, True)

class Builder(object):
    def build(self): return []

class Part(object):
    def partition(self, data): return 0

class Enc(object):
    def encode(self, data): return data

SRC = wallaroo.TCPSourceConfig("h", "1", Dec())
SINK = wallaroo.TCPSinkConfig("h", "2", Enc())
"""


def app_with(body: str) -> str:
    return (
        HEADER
        + "\ndef application_setup(args):\n"
        + "".join("    " + line + "\n" for line in body.strip().splitlines())
    )


def build_error(make_app, body: str) -> str:
    name = make_app(app_with(body))
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    return str(err.value)


def test_sequence_window_plan():
    _, plan = load_plan("sequence_window", ARGS)
    assert plan.name == "Sequence Window"
    (pipeline,) = plan.pipelines
    assert pipeline.name == "Sequence Window"
    assert (pipeline.source.host, pipeline.source.port, pipeline.source.header_length) == (
        "127.0.0.1",
        "7010",
        4,
    )
    step, state = pipeline.steps
    assert isinstance(step, Computation) and step.cls.__name__ == "MaybeOneToMany"
    assert isinstance(state, StatePartition)
    assert (state.state_name, state.keys) == ("Sequence Window", (0, 1))
    assert (pipeline.sink.host, pipeline.sink.port) == ("127.0.0.1", "7002")
    assert plan.warnings == ()


@pytest.mark.parametrize(
    ("workers", "owners"),
    [
        (["initializer"], ("initializer", "initializer")),
        (["initializer", "worker-2"], ("initializer", "worker-2")),
        (["initializer", "w2", "w3"], ("initializer", "w2")),
    ],
)
def test_placement_is_round_robin_in_key_order(workers, owners):
    _, plan = load_plan("sequence_window", ARGS)
    placement = plan.placement(workers)
    assert tuple(placement.owner("Sequence Window", i) for i in range(2)) == owners
    assert placement.owned_by(workers[-1])["Sequence Window"] == [
        i for i, w in enumerate(owners) if w == workers[-1]
    ]


def test_fingerprint_depends_on_what_workers_must_agree_on(make_app):
    _, plan = load_plan("sequence_window", ARGS)
    _, again = load_plan("sequence_window", ["other", "--in", "x:1", "--out", "y:2"])
    assert plan.fingerprint() == again.fingerprint()
    assert plan.fingerprint(resilience=True) != plan.fingerprint()
    three = make_app(
        "from sequence_window import *\n"
        "import sequence_window as sw, wallaroo\n"
        "def application_setup(args):\n"
        "    ab = wallaroo.ApplicationBuilder('Sequence Window')\n"
        "    ab.new_pipeline('Sequence Window', wallaroo.TCPSourceConfig('h', '1', Decoder()))\n"
        "    ab.to(MaybeOneToMany)\n"
        "    ab.to_state_partition(ObserveNewValue(), SequenceWindowStateBuilder(),\n"
        "        'Sequence Window', SequencePartitionFunction(), [0, 1, 2])\n"
        "    ab.to_sink(wallaroo.TCPSinkConfig('h', '2', Encoder()))\n"
        "    return ab.build()\n"
    )
    _, other = load_plan(three, ARGS)
    assert other.fingerprint() != plan.fingerprint()


def test_sys_path_puts_runner_wallaroo_first_then_cwd(make_app, tmp_path):
    make_app("STRAY = True\n", name="wallaroo")  # a stray wallaroo.py in the working directory
    sys.modules.pop("wallaroo", None)
    prepare_sys_path()
    assert sys.path[0] == LIB_DIR
    assert sys.path[1] == str(tmp_path)
    name = make_app(
        app_with(
            "return wallaroo.ApplicationBuilder('A').new_pipeline('P', SRC).to_sink(SINK).build()"
        )
    )
    _, plan = load_plan(name, ARGS)
    assert plan.name == "A"
    assert not hasattr(sys.modules["wallaroo"], "STRAY")


def test_a_foreign_wallaroo_module_is_refused(make_app, monkeypatch):
    import types

    fake = types.ModuleType("wallaroo")
    fake.__file__ = "/elsewhere/wallaroo.py"
    monkeypatch.setitem(sys.modules, "wallaroo", fake)
    name = make_app("def application_setup(args): return []\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    assert str(err.value) == (
        f"'import wallaroo' loaded /elsewhere/wallaroo.py, not the machida API module "
        f"{LIB_DIR}/wallaroo.py"
    )


@pytest.mark.parametrize("name", ["no_such_module_here", "no_such_package.app"])
def test_a_module_that_is_not_there_is_one_line(name):
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    text = str(err.value)
    assert "\n" not in text and "Traceback" not in text
    assert text.startswith(f"Could not load module '{name}': no module of that name in ")


def test_a_module_whose_own_import_is_missing_shows_its_traceback(make_app):
    name = make_app("import no_such_dependency\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    text = str(err.value)
    assert "Traceback" in text and "No module named 'no_such_dependency'" in text
    assert text.endswith(f"Could not load module '{name}'")


def test_module_that_raises_on_import(make_app):
    name = make_app("raise RuntimeError('boom at import')\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    assert "RuntimeError: boom at import" in str(err.value)
    assert str(err.value).endswith(f"Could not load module '{name}'")


def test_no_application_setup(make_app):
    name = make_app("x = 1\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    assert str(err.value) == f"module '{name}' has no application_setup(args)"


def test_setup_raises_shows_user_traceback(make_app):
    name = make_app("def application_setup(args):\n    return helper()\ndef helper():\n    1/0\n")
    with pytest.raises(ApplicationError) as err:
        load_plan(name, ARGS)
    text = str(err.value)
    assert "in helper" in text and "ZeroDivisionError" in text
    assert f"application_setup(args) of module '{name}' raised ZeroDivisionError" in text


def test_sequence_window_without_in_names_the_parameter_error():
    with pytest.raises(ApplicationError) as err:
        load_plan("sequence_window", ["machida", "--out", "h:1"])
    assert "WallarooParameterError: tcp_parse_input_addrs: args contain no --in/-i option" in str(
        err.value
    )


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ("return ('name', 'A')", "application_setup(args) returned tuple, expected the list"),
        (
            "return [('new_pipeline', 'P', SRC.to_tuple()), ('to_sink', SINK.to_tuple())]",
            "no ('name', ...) action",
        ),
        (
            "return [('name', 'A'), ('to', Step)]",
            "to(...) at action 1 comes before any new_pipeline",
        ),
        ("return [('name', 'A'), ['to', Step]]", "action 1 is ['to', <class"),
        (
            "return wallaroo.ApplicationBuilder('A').new_pipeline('P', SRC).to_sink(SINK).done().build()",
            "done() at action 3 has no open pipeline: to_sink() already closed pipeline 'P'. "
            "Remove done(); it is only for pipelines without a sink.",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()), ('to', Step()),"
            " ('done',)]",
            "to() at action 2 got an instance of Step; it expects a computation class",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp, Builder(), 's', Part(), [0]), ('done',)]",
            "got the class Comp as its state computation; it expects an instance",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp(), Builder(), 's', Part(), 7), ('done',)]",
            "got partition keys 7; expected a list",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp(), Builder(), 's', Part(), []), ('done',)]",
            "got an empty key list",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp(), Builder(), 's', Part(), [1, 1.0]), ('done',)]",
            "key 1.0 appears twice in the key list",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp(), Builder(), 's', Part(), [[1]]), ('done',)]",
            "key [1] is not hashable",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition_u64', Comp(), Builder(), 's', Part(), [True]), ('done',)]",
            "needs int keys; got True",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', ('udp', 'h', '1', Dec())), ('done',)]",
            "the source at action 1 is ('udp', 'h', '1', <",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()), ('to_sink', ('file', 'x'))]",
            "the sink at action 2 is ('file', 'x'); expected the tuple of a TCPSinkConfig",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', wallaroo.KafkaSourceConfig('t', [], 'Warn',"
            " Dec()).to_tuple()), ('done',)]",
            "Kafka sources and sinks are not supported by this runner",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', ('tcp', 'h', 1, Dec())), ('done',)]",
            "has host 'h' and port 1; both must be str",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', ('tcp', 'h', '1', Step())), ('done',)]",
            "Step at action 1 is used as a decoder but has no header_length()",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()), ('to', Builder), ('done',)]",
            "Builder at action 2 is used as a stateless computation but has no compute() or compute_multi()",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_stateful', Comp(), Step(), 's'), ('done',)]",
            "Step at action 2 is used as a state builder but has no build()",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_state_partition', Comp(), Builder(), 's', Step(), [0]), ('done',)]",
            "Step at action 2 is used as a partition function but has no partition()",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_sink', ('tcp', 'h', '2', Step()))]",
            "Step at action 2 is used as an encoder",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 7, SRC.to_tuple()), ('done',)]",
            "pipeline name at action 1 is 7; expected a str",
        ),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_stateful', Comp(), Builder(), 5), ('done',)]",
            "state name at action 2 is 5",
        ),
        ("return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple())]", "no complete pipeline"),
        (
            "return [('name', 'A'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('new_pipeline', 'Q', SRC.to_tuple())]",
            "while pipeline 'P' is still open",
        ),
        (
            "return [('name', 'A'),"
            " ('new_pipeline', 'P', SRC.to_tuple()), ('to_stateful', Comp(), Builder(), 's'), ('done',),"
            " ('new_pipeline', 'Q', SRC.to_tuple()), ('to_state_partition', Comp(), Builder(), 's',"
            " Part(), [0, 1]), ('done',)]",
            "state 's' at action 5 is shared with an earlier step but its state builder or key list",
        ),
    ],
)
def test_malformed_applications(make_app, body, expected):
    assert expected in build_error(make_app, body)


@pytest.mark.parametrize(
    ("header_length", "expected"),
    [
        ("0", "returned 0; expected an int from 1 to 8"),
        ("9", "returned 9"),
        ("True", "returned True"),
        ("'4'", "returned '4'"),
        ("1/0", "raised ZeroDivisionError"),
    ],
)
def test_bad_header_length_is_a_start_up_error(make_app, header_length, expected):
    body = (
        "class D(Dec):\n    def header_length(self): return " + header_length + "\n"
        "return [('name', 'A'), ('new_pipeline', 'P', ('tcp', 'h', '1', D())), ('done',)]"
    )
    text = build_error(make_app, body)
    assert text.startswith("D.header_length() ") and expected in text


def test_warnings_for_unknown_actions_second_name_and_unclosed_pipeline(make_app):
    name = make_app(
        app_with(
            "return [('name', 'A'), ('name', 'B'), ('new_pipeline', 'P', SRC.to_tuple()),"
            " ('to_magic', 1), ('to_sink', SINK.to_tuple()), ('new_pipeline', 'Q', SRC.to_tuple())]"
        )
    )
    seen = []
    _, plan = load_plan(name, ARGS, warn=seen.append)
    assert plan.name == "A" and [p.name for p in plan.pipelines] == ["P"]
    assert seen == list(plan.warnings)
    assert len(seen) == 3
    assert "second application name at action 1" in seen[0]
    assert "unknown action 'to_magic' at action 3" in seen[1]
    assert "pipeline 'Q' has no to_sink() or done()" in seen[2]


def test_done_closes_a_pipeline_without_a_sink_and_shared_state_is_allowed(make_app):
    name = make_app(
        app_with(
            "ab = wallaroo.ApplicationBuilder('A')\n"
            "ab.new_pipeline('P', SRC).to_stateful(Comp(), Builder(), 's').done()\n"
            "ab.new_pipeline('Q', SRC).to_stateful(Comp(), Builder(), 's').to_sink(SINK)\n"
            "return ab.build()"
        )
    )
    _, plan = load_plan(name, ARGS)
    assert [p.sink is None for p in plan.pipelines] == [True, False]
    assert plan.state_keys() == {"s": (0,)}


def test_app_args_strip_runner_and_pony_options_and_keep_the_rest():
    argv = [
        "machida",
        "--application-module",
        "sequence_window",
        "--ponythreads=1",
        "--ponynoblock",
        "--metrics",
        "127.0.0.1:5001",
        "--in",
        "127.0.0.1:7010",
        "-c",
        "h:6000",
        "--out=h:7002",
        "--data=h:6001",
        "--worker-count",
        "2",
        "--cluster-initializer",
        "-nworker-2",
        "--ponythreads",
        "4",
        "--foo",
        "bar",
        "-x",
        "h:1",
        "--run-with-resilience",
    ]
    assert app_args(argv) == ["machida", "--in", "127.0.0.1:7010", "--out=h:7002", "--foo", "bar"]
