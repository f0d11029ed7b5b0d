"""The ``wallaroo`` module that machida applications import (class-based API, October 2017).

An application's ``application_setup(args)`` uses this module to describe its
pipelines: it returns the list of action tuples that an ``ApplicationBuilder``
collects. The runner reads that list (see ``machida.app.plan``); nothing here runs
or checks more than the few parameter checks machida's module made. The runner
puts this file's folder first on ``sys.path``, as machida's PYTHONPATH did; it
is never installed as a distribution of its own.
"""

import argparse
import inspect
import pickle

__all__ = [
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
]


def serialize(o):
    """Turn a message or a state into bytes (pickle), for crossing workers or logging."""
    return pickle.dumps(o)


def deserialize(bs):
    """The inverse of :func:`serialize`."""
    return pickle.loads(bs)


class WallarooParameterError(Exception):
    """An ``ApplicationBuilder`` call got the wrong kind of argument."""


def _want_class(obj):
    if not inspect.isclass(obj):
        raise WallarooParameterError("Expecting a Computation class. Got an instance instead.")


def _want_instances(computation, state_builder):
    if inspect.isclass(computation):
        raise WallarooParameterError(
            "Expecting a Computation Builder instance. Got a class instead."
        )
    if inspect.isclass(state_builder):
        raise WallarooParameterError("Expecting a State Builder instance. Got a class instead.")


class ApplicationBuilder(object):
    """Collects the actions that describe an application, in call order.

    Every method appends one tuple and returns the builder, so calls chain;
    :meth:`build` hands back the list itself.
    """

    def __init__(self, name):
        self._actions = [("name", name)]

    def _add(self, *action):
        self._actions.append(action)
        return self

    def new_pipeline(self, name, source_config):
        return self._add("new_pipeline", name, source_config.to_tuple())

    def to(self, computation):
        _want_class(computation)
        return self._add("to", computation)

    def to_parallel(self, computation):
        _want_class(computation)
        return self._add("to_parallel", computation)

    def to_stateful(self, computation, state_builder, state_name):
        _want_instances(computation, state_builder)
        return self._add("to_stateful", computation, state_builder, state_name)

    def to_state_partition_u64(
        self, computation, state_builder, state_name, partition_function, partition_keys
    ):
        _want_instances(computation, state_builder)
        return self._add(
            "to_state_partition_u64",
            computation,
            state_builder,
            state_name,
            partition_function,
            partition_keys,
        )

    def to_state_partition(
        self, computation, state_builder, state_name, partition_function, partition_keys
    ):
        _want_instances(computation, state_builder)
        if not isinstance(partition_keys, list):
            raise WallarooParameterError(
                "Expecting a partition_keys list. Got a {} instead.".format(type(partition_keys))
            )
        return self._add(
            "to_state_partition",
            computation,
            state_builder,
            state_name,
            partition_function,
            partition_keys,
        )

    def to_sink(self, sink_config):
        return self._add("to_sink", sink_config.to_tuple())

    def done(self):
        return self._add("done")

    def build(self):
        return self._actions


class TCPSourceConfig(object):
    """A TCP source; the third parameter is the decoder (its 2017 name is kept)."""

    def __init__(self, host, port, encoder):
        self._host = host
        self._port = port
        self._decoder = encoder

    def to_tuple(self):
        return ("tcp", self._host, self._port, self._decoder)


class TCPSinkConfig(object):
    """A TCP sink; the third parameter is the encoder (its 2017 name is kept)."""

    def __init__(self, host, port, decoder):
        self._host = host
        self._port = port
        self._encoder = decoder

    def to_tuple(self):
        return ("tcp", self._host, self._port, self._encoder)


class KafkaSourceConfig(object):
    """A Kafka source. Accepted here; the runner refuses it at start."""

    def __init__(self, topic, brokers, log_level, decoder):
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.decoder = decoder

    def to_tuple(self):
        return ("kafka", self.topic, self.brokers, self.log_level, self.decoder)


class KafkaSinkConfig(object):
    """A Kafka sink. Accepted here; the runner refuses it at start."""

    def __init__(self, topic, brokers, log_level, max_produce_buffer_ms, max_message_size, encoder):
        self.topic = topic
        self.brokers = brokers
        self.log_level = log_level
        self.max_produce_buffer_ms = max_produce_buffer_ms
        self.max_message_size = max_message_size
        self.encoder = encoder

    def to_tuple(self):
        return (
            "kafka",
            self.topic,
            self.brokers,
            self.log_level,
            self.max_produce_buffer_ms,
            self.max_message_size,
            self.encoder,
        )


def _parse_addrs(args, short, long, what):
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument(short, long, dest="addrs")
    addrs = parser.parse_known_args(args)[0].addrs
    if addrs is None:
        raise WallarooParameterError("{}: args contain no {}/{} option".format(what, long, short))
    # "h1:p1,h2:p2" -> [("h1", "p1"), ("h2", "p2")]; ports stay strings.
    return [tuple(piece.split(":")) for piece in addrs.split(",")]


def tcp_parse_input_addrs(args):
    """The ``--in``/``-i`` addresses of ``args`` as a list of ``(host, port)`` string tuples."""
    return _parse_addrs(args, "-i", "--in", "tcp_parse_input_addrs")


def tcp_parse_output_addrs(args):
    """The ``--out``/``-o`` addresses of ``args`` as a list of ``(host, port)`` string tuples."""
    return _parse_addrs(args, "-o", "--out", "tcp_parse_output_addrs")


def _kafka_broker(text):
    host, _, port = text.partition(":")
    return (host, port if port else "9092")


def _kafka_parser(prefix):
    parser = argparse.ArgumentParser(prog="wallaroo")
    parser.add_argument("--kafka_{}_topic".format(prefix), dest="topic", default="")
    parser.add_argument("--kafka_{}_brokers".format(prefix), dest="brokers", default="")
    parser.add_argument(
        "--kafka_{}_log_level".format(prefix),
        dest="log_level",
        default="Warn",
        choices=["Fine", "Info", "Warn", "Error"],
    )
    return parser


def kafka_parse_source_options(args):
    """``(topic, brokers, log_level)`` from the ``--kafka_source_*`` flags."""
    known = _kafka_parser("source").parse_known_args(args)[0]
    brokers = [_kafka_broker(b) for b in known.brokers.split(",")]
    return (known.topic, brokers, known.log_level)


def kafka_parse_sink_options(args):
    """``(topic, brokers, log_level, max_produce_buffer_ms, max_message_size)``."""
    parser = _kafka_parser("sink")
    parser.add_argument(
        "--kafka_sink_max_produce_buffer_ms", dest="max_produce_buffer_ms", type=int, default=0
    )
    parser.add_argument(
        "--kafka_sink_max_message_size", dest="max_message_size", type=int, default=100000
    )
    known = parser.parse_known_args(args)[0]
    brokers = [_kafka_broker(b) for b in known.brokers.split(",")]
    return (
        known.topic,
        brokers,
        known.log_level,
        known.max_produce_buffer_ms,
        known.max_message_size,
    )
