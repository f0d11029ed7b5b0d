"""Writes Market Spread's inputs and the output they must give.

python _test/gen.py [--orders 1000] [--quotes 400] [--seed 2017]

_market.txt  framed quotes, for the second source (the "Market Data" pipeline)
_orders.txt  framed orders, for the first source (the "Orders" pipeline)
_expected.txt  the framed verdict of every order, computed here on its own

The quotes and the orders come in on two connections, so nothing says which
of them the cluster applies first. Each quoted symbol therefore keeps one bid
and offer, quoted again and again: whatever the interleaving, an order meets
either its symbol's quote or no quote yet. _expected.txt holds the verdicts
against the quotes; _test/validate.py also accepts "rejected (no quote)" for
the orders of a symbol that came before its first quote. Three symbols never
get a quote. The rules are written out again here rather than imported from
the application.
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

    quotes = {}
    for symbol in quoted:
        bid = rng.randrange(1000, 20000) / 100.0
        spread = 0.002 if rng.random() < 0.75 else 0.03  # mostly narrow, some too wide
        quotes[symbol] = (bid, round(bid * (1 + spread), 2))
    if args.quotes < len(quoted):
        parser.error("--quotes must be at least %d, one per quoted symbol" % len(quoted))
    # every quoted symbol once, in a random order, then any of them
    sequence = rng.sample(quoted, len(quoted))
    sequence += [rng.choice(quoted) for _ in range(args.quotes - len(quoted))]
    with open("_market.txt", "wb") as market:
        for symbol in sequence:
            bid, offer = quotes[symbol]
            market.write(frame(struct.pack(">B4sdd", 2, padded(symbol), bid, offer)))

    with open("_orders.txt", "wb") as orders, open("_expected.txt", "wb") as expected:
        for order_id in range(1, args.orders + 1):
            symbol = rng.choice(symbols)
            side = rng.choice([1, 2])
            qty = float(rng.randrange(1, 50) * 100)
            bid, offer = quotes.get(symbol, (100.0, 100.2))
            price = round(rng.choice([offer, bid]) * rng.choice([0.999, 1.0, 1.001]), 2)
            orders.write(
                frame(struct.pack(">BI4sBdd", 1, order_id, padded(symbol), side, qty, price))
            )
            expected.write(frame(result(order_id, symbol, side, qty, price, quotes.get(symbol))))
    print(
        "wrote %d quotes to _market.txt, %d orders to _orders.txt and _expected.txt"
        % (args.quotes, args.orders)
    )


if __name__ == "__main__":
    main()
