"""Word Count: a running tally of every word in a stream of text lines.

Each message is one line of UTF-8 text behind a u32be length. WordsOfLine
turns a line into its words (lowercased, punctuation trimmed from both ends)
and returns them all at once with compute_multi. Every word then goes to the
tally of its first letter: the state "tallies by first letter" is partitioned
by str keys, one per letter 'a'..'z' plus OTHER for words that begin with
anything else. AddOne bumps the word's tally, and the sink gets the framed
text "word => tally" from the worker that owns the letter.
"""

import string
import struct

import wallaroo

LENGTH = struct.Struct(">I")
# the key of words that do not begin with a lowercase ASCII letter
OTHER = "!"
FIRST_LETTERS = list(string.ascii_lowercase) + [OTHER]


def application_setup(args):
    source_host, source_port = wallaroo.tcp_parse_input_addrs(args)[0]
    sink_host, sink_port = wallaroo.tcp_parse_output_addrs(args)[0]

    builder = wallaroo.ApplicationBuilder("Word Tally")
    builder.new_pipeline(
        "Lines to Tallies", wallaroo.TCPSourceConfig(source_host, source_port, LineDecoder())
    )
    builder.to_parallel(WordsOfLine)
    builder.to_state_partition(
        AddOne(), EmptyTally(), "tallies by first letter", ByFirstLetter(), FIRST_LETTERS
    )
    builder.to_sink(wallaroo.TCPSinkConfig(sink_host, sink_port, TallyLineEncoder()))
    return builder.build()


class LineDecoder(object):
    def header_length(self):
        return LENGTH.size

    def payload_length(self, header):
        return LENGTH.unpack(header)[0]

    def decode(self, payload):
        # the only place that sees bytes: every later step works on str
        return payload.decode("utf-8")


class WordsOfLine(object):
    def name(self):
        return "words of a line"

    def compute_multi(self, line):
        trimmed = (piece.strip(string.punctuation) for piece in line.lower().split())
        return [word for word in trimmed if word]


class ByFirstLetter(object):
    def partition(self, word):
        # a str, like the keys in FIRST_LETTERS
        return word[0] if word[0] in string.ascii_lowercase else OTHER


class LetterTally(object):
    """How many times each word beginning with one letter has been seen."""

    def __init__(self):
        self.seen = {}

    def add(self, word):
        self.seen[word] = self.seen.get(word, 0) + 1
        return self.seen[word]


class EmptyTally(object):
    def build(self):
        return LetterTally()


class AddOne(object):
    def name(self):
        return "add one to the word's tally"

    def compute(self, word, tally):
        # (output, the state changed)
        return ((word, tally.add(word)), True)


class TallyLineEncoder(object):
    def encode(self, word_and_tally):
        # the sink gets bytes: the UTF-8 text behind its length
        text = ("%s => %d" % word_and_tally).encode("utf-8")
        return LENGTH.pack(len(text)) + text
