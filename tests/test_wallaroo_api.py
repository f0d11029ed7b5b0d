"""The runner's ``wallaroo`` module: the 2017 class-based API, action by action."""

from __future__ import annotations

import pickle

import pytest

from machida.app.loader import LIB_DIR, prepare_sys_path

prepare_sys_path()
import wallaroo  # noqa: E402


class Comp:
    def compute(self, data):
        return data


class Builder:
    def build(self):
        return 0


class Part:
    def partition(self, data):
        return 0


def test_the_module_is_the_runners_own_file():
    assert wallaroo.__file__.startswith(LIB_DIR)


def test_public_names_are_exactly_the_2017_api():
    assert set(wallaroo.__all__) == {
        "ApplicationBuilder",
        "KafkaSinkConfig",
        "KafkaSourceConfig",
        "TCPSinkConfig",
        "TCPSourceConfig",
        "WallarooParameterError",
        "deserialize",
        "kafka_parse_sink_options",
        "kafka_parse_source_options",
        "serialize",
        "tcp_parse_input_addrs",
        "tcp_parse_output_addrs",
    }
    public = {n for n in vars(wallaroo) if not n.startswith("_")} - {
        "argparse",
        "inspect",
        "pickle",
    }
    assert public == set(wallaroo.__all__)


def test_builder_appends_one_tuple_per_call_and_chains():
    src = wallaroo.TCPSourceConfig("h", "1", "decoder")
    sink = wallaroo.TCPSinkConfig("h", "2", "encoder")
    ab = wallaroo.ApplicationBuilder("App")
    comp, builder, part = Comp(), Builder(), Part()
    same = (
        ab.new_pipeline("P", src)
        .to(Comp)
        .to_parallel(Comp)
        .to_stateful(comp, builder, "s1")
        .to_state_partition_u64(comp, builder, "s2", part, [1, 2])
        .to_state_partition(comp, builder, "s3", part, ["a"])
        .to_sink(sink)
        .done()
    )
    assert same is ab
    actions = ab.build()
    assert actions is ab.build()  # the builder's own list, not a copy
    assert actions == [
        ("name", "App"),
        ("new_pipeline", "P", ("tcp", "h", "1", "decoder")),
        ("to", Comp),
        ("to_parallel", Comp),
        ("to_stateful", comp, builder, "s1"),
        ("to_state_partition_u64", comp, builder, "s2", part, [1, 2]),
        ("to_state_partition", comp, builder, "s3", part, ["a"]),
        ("to_sink", ("tcp", "h", "2", "encoder")),
        ("done",),
    ]


@pytest.mark.parametrize("method", ["to", "to_parallel"])
def test_to_wants_a_class(method):
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        getattr(wallaroo.ApplicationBuilder("A"), method)(Comp())
    assert str(err.value) == "Expecting a Computation class. Got an instance instead."


@pytest.mark.parametrize("method", ["to_stateful", "to_state_partition", "to_state_partition_u64"])
def test_state_steps_want_instances(method):
    extra = () if method == "to_stateful" else (Part(), [0])
    ab = wallaroo.ApplicationBuilder("A")
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        getattr(ab, method)(Comp, Builder(), "s", *extra)
    assert str(err.value) == "Expecting a Computation Builder instance. Got a class instead."
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        getattr(ab, method)(Comp(), Builder, "s", *extra)
    assert str(err.value) == "Expecting a State Builder instance. Got a class instead."
    assert ab.build() == [("name", "A")]


def test_partition_keys_must_be_a_list_but_u64_keys_are_unchecked():
    ab = wallaroo.ApplicationBuilder("A")
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        ab.to_state_partition(Comp(), Builder(), "s", Part(), (0, 1))
    assert str(err.value) == "Expecting a partition_keys list. Got a <class 'tuple'> instead."
    ab.to_state_partition_u64(Comp(), Builder(), "s", Part(), (0, 1))
    assert ab.build()[-1][-1] == (0, 1)


def test_tcp_parse_addrs_return_string_tuples():
    args = ["prog", "--in", "127.0.0.1:7010,h2:7011", "--out", "127.0.0.1:7002", "--foo", "x"]
    assert wallaroo.tcp_parse_input_addrs(args) == [("127.0.0.1", "7010"), ("h2", "7011")]
    assert wallaroo.tcp_parse_output_addrs(args) == [("127.0.0.1", "7002")]
    assert wallaroo.tcp_parse_input_addrs(["p", "-i", "a:1"]) == [("a", "1")]
    assert wallaroo.tcp_parse_output_addrs(["p", "-o", "b:2"]) == [("b", "2")]
    # argparse prefix matching, as in 2017, and unvalidated pieces
    assert wallaroo.tcp_parse_input_addrs(["p", "--i", "nocolon"]) == [("nocolon",)]


def test_missing_in_is_a_parameter_error_not_an_attribute_error():
    with pytest.raises(wallaroo.WallarooParameterError) as err:
        wallaroo.tcp_parse_input_addrs(["prog", "--out", "h:1"])
    assert str(err.value) == "tcp_parse_input_addrs: args contain no --in/-i option"
    with pytest.raises(wallaroo.WallarooParameterError, match="--out/-o"):
        wallaroo.tcp_parse_output_addrs(["prog"])


def test_in_without_a_value_is_argparse_usage_exit_2(capsys):
    with pytest.raises(SystemExit) as exit_:
        wallaroo.tcp_parse_input_addrs(["prog", "--in"])
    assert exit_.value.code == 2
    assert "wallaroo" in capsys.readouterr().err


def test_kafka_configs_and_parsers():
    assert wallaroo.KafkaSourceConfig("t", [("h", "1")], "Warn", "d").to_tuple() == (
        "kafka",
        "t",
        [("h", "1")],
        "Warn",
        "d",
    )
    sink = wallaroo.KafkaSinkConfig("t", [], "Info", 5, 100, "e").to_tuple()
    assert sink == ("kafka", "t", [], "Info", 5, 100, "e")
    args = ["p", "--kafka_source_topic", "in", "--kafka_source_brokers", "a:1,b"]
    assert wallaroo.kafka_parse_source_options(args) == ("in", [("a", "1"), ("b", "9092")], "Warn")
    args = [
        "p",
        "--kafka_sink_topic",
        "out",
        "--kafka_sink_brokers",
        "c",
        "--kafka_sink_max_message_size",
        "7",
    ]
    assert wallaroo.kafka_parse_sink_options(args) == ("out", [("c", "9092")], "Warn", 0, 7)


def test_serialize_is_pickle():
    value = {"window": [1, 2, 3, 4]}
    assert wallaroo.serialize(value) == pickle.dumps(value)
    assert wallaroo.deserialize(wallaroo.serialize(value)) == value
