"""Counter: one running count and total over every number that arrives.

Numbers arrive as framed big-endian u64s (u32be length 8, then the value),
the bytes giles sender writes with --binary --msg-size 12 --u64. A single
state, made with to_stateful (no partition function, no keys: it lives on the
initializer), counts the numbers and adds them up. After each number the sink
gets the framed text "count,total".
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Counter")
    ab.new_pipeline("Count and Add", wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to_stateful(CountAndAdd(), RunningTotalBuilder(), "running total")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        return struct.unpack(">Q", bs)[0]


class RunningTotal(object):
    def __init__(self):
        self.count = 0
        self.total = 0

    def add(self, value):
        self.count += 1
        self.total += value


class RunningTotalBuilder(object):
    def build(self):
        return RunningTotal()


class CountAndAdd(object):
    def name(self):
        return "count and add"

    def compute(self, value, state):
        state.add(value)
        return ((state.count, state.total), True)


class Encoder(object):
    def encode(self, data):
        text = "{},{}".format(data[0], data[1]).encode("ascii")
        return struct.pack(">I", len(text)) + text
