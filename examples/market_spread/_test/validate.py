"""Checks Market Spread's output against the expected verdicts.

python _test/validate.py --expected _expected.txt --output received.txt

Both files hold framed records (u32be length | text), one verdict per order,
such as "000042 ACME buy 300 @ 101.52: accepted". Every order must get
exactly one verdict, in any order (orders of different symbols are checked on
different workers). The verdict must be the expected one, which is the
verdict against the symbol's quote, with one exception: the quotes come in on
their own connection, so the first orders of a symbol may be checked before
its first quote and be "rejected (no quote)". Once an order of a symbol has
met the quote, every later order of that symbol must meet it too: a symbol's
orders and quotes are each applied in the order they were sent.
"""

import argparse
import collections
import struct
import sys

NO_QUOTE = b"rejected (no quote)"
SHOWN = 10


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    out, pos = [], 0
    while pos < len(data):
        (length,) = struct.unpack_from(">I", data, pos)
        if pos + 4 + length > len(data):
            sys.exit("%s: the record at byte %d is cut short" % (path, pos))
        out.append(data[pos + 4 : pos + 4 + length])
        pos += 4 + length
    return out


def order_of(record):
    """(order id, symbol) of a verdict."""
    words = record.split(b" ", 2)
    return words[0], words[1] if len(words) > 1 else b""


def before_quote(record):
    """The same order's verdict had its symbol no quote yet."""
    return record.rsplit(b": ", 1)[0] + b": " + NO_QUOTE


def check(expected, received):
    """The problems found, as lines, and how many orders came before their quote."""
    wanted = {order_of(record)[0]: record for record in expected}
    got = collections.defaultdict(list)
    for record in received:
        got[order_of(record)[0]].append(record)
    problems = []
    for order_id in sorted(set(got) - set(wanted)):
        problems += ["unexpected: %s" % r.decode("ascii", "replace") for r in got[order_id]]
    by_symbol = collections.defaultdict(list)
    for order_id in sorted(wanted):
        by_symbol[order_of(wanted[order_id])[1]].append(order_id)
    early = 0
    for order_ids in by_symbol.values():
        quoted = False  # has an order of this symbol met its quote yet?
        for order_id in order_ids:
            want, verdicts = wanted[order_id], got.get(order_id, [])
            if len(verdicts) != 1:
                problems.append("%d verdicts for: %s" % (len(verdicts), want.decode("ascii")))
                continue
            if verdicts[0] == want:
                quoted = quoted or not want.endswith(NO_QUOTE)
            elif verdicts[0] == before_quote(want) and not quoted:
                early += 1
            else:
                problems.append("wrong:      %s\n  expected: %s" % (
                    verdicts[0].decode("ascii", "replace"), want.decode("ascii")))  # fmt: skip
    return problems, early


def main():
    parser = argparse.ArgumentParser(description="Market Spread validator")
    parser.add_argument("--output", required=True, help="the application's output file")
    parser.add_argument("--expected", required=True, help="the expected verdicts (framed)")
    args = parser.parse_args()
    received = records(args.output)
    problems, early = check(records(args.expected), received)
    for line in problems[:SHOWN]:
        print(line)
    if problems:
        print("Market Spread output is wrong: %d problem(s)" % len(problems))
        return 1
    verdicts = collections.Counter(r.split(b": ", 1)[1].decode() for r in received)
    print(
        "Market Spread output is correct: %s; %d order(s) came before their symbol's first quote"
        % (", ".join("%d %s" % (n, v) for v, n in sorted(verdicts.items())), early)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
