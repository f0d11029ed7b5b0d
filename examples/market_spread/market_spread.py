"""Market Spread: check orders against the latest quote of their symbol.

Two sources, two pipelines, one partitioned state. The "Market Data" pipeline
(second --in address) reads quotes and keeps the latest bid and offer of each
symbol; it has no sink (done()). The "Orders" pipeline (first --in address)
checks each order against that symbol's quote and sends the verdict, as framed
text, to the sink. Both pipelines use the state "symbol-data", partitioned by
symbol: the keys are the 4-byte symbols of symbols.txt, as bytes.

Wire formats (big-endian, each message behind a u32be length):
  order:  u8 type (1) | u32 order id | 4s symbol | u8 side (1 buy, 2 sell) | f64 qty | f64 price
  quote:  u8 type (2) | 4s symbol | f64 bid | f64 offer
"""

import struct

import wallaroo

FIXTYPE_ORDER = 1
FIXTYPE_MARKET_DATA = 2
SIDE_BUY = 1
SIDE_SELL = 2
# An order is refused when its symbol's spread is wider than this share of the mid price.
MAX_SPREAD = 0.01

ORDER = struct.Struct(">BI4sBdd")
QUOTE = struct.Struct(">B4sdd")


def load_valid_symbols():
    # opened in binary mode: the keys are bytes, like the symbols in the messages
    with open("symbols.txt", "rb") as f:
        return [symbol.ljust(4) for symbol in f.read().split()]


def application_setup(args):
    input_addrs = wallaroo.tcp_parse_input_addrs(args)
    order_host, order_port = input_addrs[0]
    market_host, market_port = input_addrs[1]
    out_host, out_port = wallaroo.tcp_parse_output_addrs(args)[0]

    symbol_partitions = load_valid_symbols()

    ab = wallaroo.ApplicationBuilder("market-spread")
    ab.new_pipeline("Orders", wallaroo.TCPSourceConfig(order_host, order_port, OrderDecoder()))
    ab.to_state_partition(
        CheckOrder(), SymbolDataBuilder(), "symbol-data", SymbolPartitionFunction(),
        symbol_partitions,
    )  # fmt: skip
    ab.to_sink(wallaroo.TCPSinkConfig(out_host, out_port, OrderResultEncoder()))
    ab.new_pipeline(
        "Market Data", wallaroo.TCPSourceConfig(market_host, market_port, MarketDataDecoder())
    )
    ab.to_state_partition(
        UpdateMarketData(), SymbolDataBuilder(), "symbol-data", SymbolPartitionFunction(),
        symbol_partitions,
    )  # fmt: skip
    ab.done()
    return ab.build()


class MarketSpreadError(Exception):
    pass


class SymbolData(object):
    def __init__(self):
        self.bid = None
        self.offer = None


class SymbolDataBuilder(object):
    def build(self):
        return SymbolData()


class SymbolPartitionFunction(object):
    def partition(self, data):
        return data.symbol


class Order(object):
    def __init__(self, order_id, symbol, side, qty, price):
        self.order_id = order_id
        self.symbol = symbol
        self.side = side
        self.qty = qty
        self.price = price


class OrderDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        # indexing bytes gives an int in Python 3 (a 1-character str in Python 2)
        if bs[0] != FIXTYPE_ORDER:
            raise MarketSpreadError(
                "not an order (type {}): are the two inputs swapped?".format(bs[0])
            )
        _, order_id, symbol, side, qty, price = ORDER.unpack(bs)
        return Order(order_id, symbol, side, qty, price)


class MarketData(object):
    def __init__(self, symbol, bid, offer):
        self.symbol = symbol
        self.bid = bid
        self.offer = offer


class MarketDataDecoder(object):
    def header_length(self):
        return 4

    def payload_length(self, bs):
        return struct.unpack(">I", bs)[0]

    def decode(self, bs):
        if bs[0] != FIXTYPE_MARKET_DATA:
            raise MarketSpreadError(
                "not a quote (type {}): are the two inputs swapped?".format(bs[0])
            )
        _, symbol, bid, offer = QUOTE.unpack(bs)
        return MarketData(symbol, bid, offer)


class UpdateMarketData(object):
    def name(self):
        return "update market data"

    def compute(self, data, state):
        state.bid = data.bid
        state.offer = data.offer
        return (None, True)


class CheckOrder(object):
    def name(self):
        return "check order"

    def compute(self, order, state):
        return (OrderResult(order, verdict(order, state.bid, state.offer)), False)


def verdict(order, bid, offer):
    if bid is None:
        return "rejected (no quote)"
    if offer - bid > MAX_SPREAD * (bid + offer) / 2:
        return "rejected (spread too wide)"
    if order.side == SIDE_BUY and order.price < offer:
        return "rejected (below the offer)"
    if order.side == SIDE_SELL and order.price > bid:
        return "rejected (above the bid)"
    return "accepted"


class OrderResult(object):
    def __init__(self, order, verdict):
        self.order = order
        self.verdict = verdict


class OrderResultEncoder(object):
    def encode(self, data):
        order = data.order
        text = "{:06d} {} {} {:g} @ {:.2f}: {}".format(
            order.order_id,
            order.symbol.decode("ascii").strip(),
            "buy" if order.side == SIDE_BUY else "sell",
            order.qty,
            order.price,
            data.verdict,
        ).encode("ascii")
        return struct.pack(">I", len(text)) + text
