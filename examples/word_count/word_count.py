"""Word Count: split lines of text into words and keep a running count of each word.

Lines arrive framed (u32be length, then the UTF-8 text). A stateless step
splits each line into words; a state partition keyed by the word's first
letter ('a'..'z', and '!' for anything else) counts each word; every count is
sent to the sink as the framed text "word => count".
"""

import string
import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    word_partitions = list(string.ascii_lowercase)
    word_partitions.append("!")

    ab = wallaroo.ApplicationBuilder("Word Count Application")
    ab.new_pipeline("Split and Count", wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to_parallel(Split)
    ab.to_state_partition(
        CountWord(), WordTotalsBuilder(), "word totals", WordPartitionFunction(), word_partitions
    )
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        # bs is bytes: the text becomes a str here, once, for every later step
        return bs.decode("utf-8")


class Split(object):
    def name(self):
        return "split into words"

    def compute_multi(self, data):
        words = []
        for word in data.lower().split():
            word = word.strip(string.punctuation)
            if word:
                words.append(word)
        return words


class WordPartitionFunction(object):
    def partition(self, data):
        # a str key, matched against the str keys of word_partitions
        first = data[0]
        if "a" <= first <= "z":
            return first
        return "!"


class CountWord(object):
    def name(self):
        return "count word"

    def compute(self, word, word_totals):
        word_totals.update(word)
        return (word_totals.get_count(word), True)


class WordTotals(object):
    def __init__(self):
        self.word_totals = {}

    def update(self, word):
        self.word_totals[word] = self.word_totals.get(word, 0) + 1

    def get_count(self, word):
        return WordCount(word, self.word_totals[word])


class WordCount(object):
    def __init__(self, word, count):
        self.word = word
        self.count = count


class WordTotalsBuilder(object):
    def build(self):
        return WordTotals()


class Encoder(object):
    def encode(self, data):
        # the sink gets bytes: encode the text and frame it
        text = "{} => {}".format(data.word, data.count).encode("utf-8")
        return struct.pack(">I", len(text)) + text
