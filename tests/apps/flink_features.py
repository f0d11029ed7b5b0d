# An application that uses every part of the 2017 API machida-flink translates:
# three pipelines (three sources), to / to_parallel / compute_multi, a state
# partition with str keys and unknown keys, u64 state partitions shared by two
# pipelines, to_stateful after another state step, a stateless step after a
# state step, a done() pipeline without a sink, two sinks, and a decoder that
# raises for one value. Written in the 2017 style, as users wrote them.
#
#   --in WORDS,NUMBERS,MORE,ECHO --out WORD_SINK,NUMBER_SINK
#
# The fourth pipeline has no state step and writes to the first sink address
# through a sink of its own (a connection of its own).

import struct

import wallaroo

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)]
# NumberDecoder.decode raises for this value (the error policy's test).
BAD_NUMBER = 13


def application_setup(args):
    ins = wallaroo.tcp_parse_input_addrs(args)
    outs = wallaroo.tcp_parse_output_addrs(args)
    ab = wallaroo.ApplicationBuilder("Flink features")
    ab.new_pipeline("words", wallaroo.TCPSourceConfig(ins[0][0], ins[0][1], TextDecoder()))
    ab.to(Lower)
    ab.to_parallel(SplitWords)
    ab.to_state_partition(CountWord(), CounterBuilder(), "word counts", FirstLetter(), LETTERS)
    ab.to(Bracket)
    ab.to_sink(wallaroo.TCPSinkConfig(outs[0][0], outs[0][1], TextEncoder()))
    ab.new_pipeline("numbers", wallaroo.TCPSourceConfig(ins[1][0], ins[1][1], NumberDecoder()))
    ab.to_state_partition_u64(AddTo(), TotalBuilder(), "totals", ModThree(), [0, 1, 2])
    ab.to_stateful(Sequence(), SequenceBuilder(), "sequence")
    ab.to_sink(wallaroo.TCPSinkConfig(outs[1][0], outs[1][1], TextEncoder()))
    ab.new_pipeline("more numbers", wallaroo.TCPSourceConfig(ins[2][0], ins[2][1], NumberDecoder()))
    ab.to_state_partition_u64(AddTo(), TotalBuilder(), "totals", ModThree(), [0, 1, 2])
    ab.done()
    ab.new_pipeline("echo", wallaroo.TCPSourceConfig(ins[3][0], ins[3][1], TextDecoder()))
    ab.to(Reverse)
    ab.to_sink(wallaroo.TCPSinkConfig(outs[0][0], outs[0][1], TextEncoder()))
    return ab.build()


class TextDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        return bs.decode("utf-8")


class NumberDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        value = struct.unpack(">Q", bs)[0]
        if value == BAD_NUMBER:
            raise ValueError("unlucky number")
        return value


class Lower(object):
    def compute(self, data):
        return data.lower()


class SplitWords(object):
    def compute_multi(self, data):
        words = data.split()
        return words if words else None


class FirstLetter(object):
    def partition(self, data):
        return data[0]


class Counter(object):
    def __init__(self):
        self.count = 0


class CounterBuilder(object):
    def build(self):
        return Counter()


class CountWord(object):
    def name(self):
        return "count word"

    def compute(self, data, state):
        state.count += 1
        return ("%s:%d" % (data, state.count), True)


class Bracket(object):
    def compute(self, data):
        return "<%s>" % data


class ModThree(object):
    def partition(self, data):
        return data % 3


class Total(object):
    def __init__(self):
        self.total = 0


class TotalBuilder(object):
    def build(self):
        return Total()


class AddTo(object):
    def compute(self, data, state):
        state.total += data
        return ("%d:%d" % (data % 3, state.total), True)


class Counted(object):
    def __init__(self):
        self.n = 0


class SequenceBuilder(object):
    def build(self):
        return Counted()


class Sequence(object):
    def compute_multi(self, data, state):
        state.n += 1
        return (["%d|%s" % (state.n, data)], True)


class Reverse(object):
    def compute(self, data):
        return "echo:" + data[::-1]


class TextEncoder(object):
    def encode(self, data):
        text = data.encode("utf-8")
        return struct.pack(">I", len(text)) + text
