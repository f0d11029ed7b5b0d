"""Writes Market Spread's inputs and the output they must give.

python _test/gen.py [--orders 1000] [--quotes 400] [--seed 2017]

_market.txt  framed quotes, for the second source (the "Market Data" pipeline)
_orders.txt  framed orders, for the first source (the "Orders" pipeline)
_expected.txt  the framed verdict of every order, computed here on its own

Quotes are sent first and orders after them, so each order meets the last
quote of its symbol (a few symbols get no quote at all). The rules are
written out again here rather than imported from the application.
"""

import argparse
import random
import struct


def frame(payload):
    return struct.pack(">I", len(payload)) + payload


def padded(symbol):
    return symbol.encode("ascii").ljust(4)


def result(order_id, symbol, side, qty, price, quote):
    if quote is None:
        why = "rejected (no quote)"
    else:
        bid, offer = quote
        if (offer - bid) * 2 > 0.01 * (bid + offer):
            why = "rejected (spread too wide)"
        elif side == 1 and price < offer:
            why = "rejected (below the offer)"
        elif side == 2 and price > bid:
            why = "rejected (above the bid)"
        else:
            why = "accepted"
    text = "%06d %s %s %g @ %.2f: %s" % (
        order_id,
        symbol,
        "buy" if side == 1 else "sell",
        qty,
        price,
        why,
    )
    return text.encode("ascii")


def main():
    parser = argparse.ArgumentParser(description="Market Spread test data")
    parser.add_argument("--orders", type=int, default=1000)
    parser.add_argument("--quotes", type=int, default=400)
    parser.add_argument("--seed", type=int, default=2017)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    with open("symbols.txt") as f:
        symbols = f.read().split()
    quoted = symbols[: len(symbols) - 3]  # the last three never get a quote

    last = {}
    with open("_market.txt", "wb") as market:
        for _ in range(args.quotes):
            symbol = rng.choice(quoted)
            bid = rng.randrange(1000, 20000) / 100.0
            spread = 0.002 if rng.random() < 0.7 else 0.03  # mostly narrow, some too wide
            offer = round(bid * (1 + spread), 2)
            market.write(frame(struct.pack(">B4sdd", 2, padded(symbol), bid, offer)))
            last[symbol] = (bid, offer)

    with open("_orders.txt", "wb") as orders, open("_expected.txt", "wb") as expected:
        for order_id in range(1, args.orders + 1):
            symbol = rng.choice(symbols)
            side = rng.choice([1, 2])
            qty = float(rng.randrange(1, 50) * 100)
            bid, offer = last.get(symbol, (100.0, 100.2))
            price = round(rng.choice([offer, bid]) * rng.choice([0.999, 1.0, 1.001]), 2)
            orders.write(
                frame(struct.pack(">BI4sBdd", 1, order_id, padded(symbol), side, qty, price))
            )
            expected.write(frame(result(order_id, symbol, side, qty, price, last.get(symbol))))
    print(
        "wrote %d quotes to _market.txt, %d orders to _orders.txt and _expected.txt"
        % (args.quotes, args.orders)
    )


if __name__ == "__main__":
    main()
