"""A second small class-API application, to show the driver is not sequence_window-specific.

Text lines come in (u32 length + UTF-8); a stateless step splits them into
words; a state partition keyed by first letter ('a'..'z', '#' for the rest)
keeps the total length seen per letter; the sink gets "letter:total" lines.
A ``to_stateful`` step at the end counts every output on the initializer.
"""

import struct

import wallaroo

LETTERS = [chr(c) for c in range(ord("a"), ord("z") + 1)] + ["#"]


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]
    ab = wallaroo.ApplicationBuilder("Word Lengths")
    ab.new_pipeline("Words", wallaroo.TCPSourceConfig(in_host, in_port, LineDecoder()))
    ab.to(SplitWords)
    ab.to_state_partition(AddLength(), TotalBuilder(), "totals", FirstLetter(), LETTERS)
    ab.to_stateful(CountOutputs(), TotalBuilder(), "output count")
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, LineEncoder()))
    return ab.build()


class LineDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        return bs.decode("utf-8")


class SplitWords(object):
    def compute_multi(self, line):
        return line.split() or None


class FirstLetter(object):
    def partition(self, word):
        first = word[0].lower()
        return first if first in LETTERS else "#"


class Total(object):
    def __init__(self):
        self.total = 0


class TotalBuilder(object):
    def build(self):
        return Total()


class AddLength(object):
    def compute(self, word, state):
        state.total += len(word)
        return ("{}:{}".format(FirstLetter().partition(word), state.total), True)


class CountOutputs(object):
    def compute(self, text, state):
        state.total += 1
        return ("{} #{}".format(text, state.total), False)


class LineEncoder(object):
    def encode(self, text):
        return text + "\n"
