"""Echo: every payload back to a sink, tagged with the source it came from.

A small application for integration_test's tests. ``--in a[,b]`` gives the
pipeline "left" (tag L) on a and "right" (tag R) on b; ``--out x[,y]`` sends
right's output to y when it is given. Each payload comes out as the framed
record ``L:payload`` (or the line ``L:payload`` with ``--newlines``).
``--header FMT`` is the sources' length header (a struct format, ``>I`` by
default); a payload equal to ``--exit-on TEXT`` ends the worker with status 3.
"""

import argparse
import struct

import wallaroo

OPTIONS = {}


def application_setup(args):
    parser = argparse.ArgumentParser(prog="echo")
    parser.add_argument("--header", default=">I")
    parser.add_argument("--newlines", action="store_true")
    parser.add_argument("--exit-on")
    opts, _ = parser.parse_known_args(args[1:])
    OPTIONS.update(vars(opts))
    ins = wallaroo.tcp_parse_input_addrs(args)
    outs = wallaroo.tcp_parse_output_addrs(args)
    ab = wallaroo.ApplicationBuilder("Echo")
    for i, (name, tag) in enumerate([("left", "L"), ("right", "R")][: len(ins)]):
        in_host, in_port = ins[i]
        out_host, out_port = outs[min(i, len(outs) - 1)]
        ab.new_pipeline(name, wallaroo.TCPSourceConfig(in_host, in_port, Decoder(tag)))
        ab.to(MaybeExit)
        ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


class Decoder(object):
    def __init__(self, tag):
        self.tag = tag
        self.header = struct.Struct(OPTIONS["header"])

    def header_length(self):
        return self.header.size

    def payload_length(self, bs):
        return self.header.unpack(bs)[0]

    def decode(self, bs):
        return self.tag.encode() + b":" + bs


class MaybeExit(object):
    def compute(self, data):
        if OPTIONS["exit_on"] is not None and data[2:] == OPTIONS["exit_on"].encode():
            raise SystemExit(3)
        return data


class Encoder(object):
    def encode(self, data):
        if OPTIONS["newlines"]:
            return data + b"\n"
        return struct.pack(">I", len(data)) + data
