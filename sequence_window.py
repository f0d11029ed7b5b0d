# Sequence Window: a machida application (class-based Python API, October 2017).
#
# Each input is a framed big-endian u64. Values are partitioned by parity over
# the keys [0, 1]; each key keeps the last four values it saw (starting from
# [0, 0, 0, 0]) and every new value emits that window, framed with a u32
# length, as the text "[a,b,c,d]". A validator can then check that every
# parity's series is unbroken, which is what Wallaroo's correctness tests used
# this application for: state must survive, in order, whatever happens to the
# workers.
#
# The module must keep loading under machida (Python 2.7) and machida3, so it
# uses the standard library only and no syntax newer than Python 2.7 / 3.0.

import pickle
import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    partition_keys = [0, 1]
    ab = wallaroo.ApplicationBuilder("Sequence Window")
    ab.new_pipeline("Sequence Window", wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to(MaybeOneToMany)
    ab.to_state_partition(
        ObserveNewValue(),
        SequenceWindowStateBuilder(),
        "Sequence Window",
        SequencePartitionFunction(),
        partition_keys,
    )
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


def serialize(obj):
    return pickle.dumps(obj)


def deserialize(bs):
    return pickle.loads(bs)


class SequencePartitionFunction(object):
    def partition(self, data):
        return data % 2


class SequenceWindowStateBuilder(object):
    def build(self):
        return SequenceWindow()


class SequenceWindow(object):
    """The last four values seen by one key, oldest first."""

    def __init__(self):
        self.window = [0, 0, 0, 0]

    def update(self, value):
        self.window.append(value)
        if len(self.window) > 4:
            self.window.pop(0)

    def get_window(self):
        # A copy, so that an emitted window never changes afterwards.
        return list(self.window)


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        # The payload is one big-endian u64.
        return struct.unpack(">Q", bs)[0]


class MaybeOneToMany(object):
    """Turns some messages into three, and filters the two that were sent early.

    Every multiple of the magic number is emitted together with its next two
    values, and those two are dropped when they arrive themselves. The output
    sequence is still every value once, in order, which lets the ordinary
    window test cover both one-to-one and one-to-many steps.
    """

    magic_number = 12

    def name(self):
        return "I might one to many this message!"

    def compute_multi(self, data):
        if data < self.magic_number:
            return [data]
        remainder = data % self.magic_number
        if remainder == 0:
            return [data, data + 1, data + 2]
        if remainder in (1, 2):
            return None
        return [data]


class ObserveNewValue(object):
    def name(self):
        return "Observe New Value"

    def compute(self, data, state):
        state.update(data)
        return (state.get_window(), True)


class Encoder(object):
    def encode(self, data):
        # data is the window, a list of integers; the text is plain ASCII.
        text = "[{}]".format(",".join(str(v) for v in data)).encode("ascii")
        return struct.pack(">I", len(text)) + text
