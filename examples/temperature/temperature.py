"""Temperature: Fahrenheit readings in, Celsius readings out, one by one.

Readings arrive as framed ASCII text ("98.6"). Two stateless steps turn each
one into a number and convert it; nothing is kept between messages, so the
whole pipeline runs where the source is (on the initializer). The sink gets
each result as a line of text, rounded to one decimal ("37.0\n").
"""

import struct

import wallaroo


def application_setup(args):
    in_host, in_port = wallaroo.tcp_parse_input_addrs(args)[0]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    ab = wallaroo.ApplicationBuilder("Temperature")
    ab.new_pipeline("Fahrenheit to Celsius", wallaroo.TCPSourceConfig(in_host, in_port, Decoder()))
    ab.to(ParseReading)
    ab.to(FahrenheitToCelsius)
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, Encoder()))
    return ab.build()


class Decoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        return bs


class ParseReading(object):
    def name(self):
        return "parse reading"

    def compute(self, data):
        # data is bytes; decode it before treating it as text
        return float(data.decode("ascii"))


class FahrenheitToCelsius(object):
    def name(self):
        return "fahrenheit to celsius"

    def compute(self, fahrenheit):
        return (fahrenheit - 32) * 5 / 9


class Encoder(object):
    def encode(self, celsius):
        # a line of text, as bytes; the sink adds nothing around it
        return "{:.1f}\n".format(celsius).encode("ascii")
