"""Checks Market Spread's output: exactly the expected verdicts, in any order.

python _test/validate.py --expected _expected.txt --output received.txt

Both files hold framed records (u32be length | text). Orders of different
symbols are checked on different workers, so their verdicts may arrive in
any order; every expected verdict must arrive once and nothing else may.
"""

import argparse
import collections
import struct
import sys


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


def main():
    parser = argparse.ArgumentParser(description="Market Spread validator")
    parser.add_argument("--output", required=True, help="the application's output file")
    parser.add_argument("--expected", required=True, help="the expected verdicts (framed)")
    args = parser.parse_args()
    received = collections.Counter(records(args.output))
    expected = collections.Counter(records(args.expected))
    missing = expected - received
    unexpected = received - expected
    for record in sorted(missing)[:10]:
        print("missing:    %s" % record.decode("ascii", "replace"))
    for record in sorted(unexpected)[:10]:
        print("unexpected: %s" % record.decode("ascii", "replace"))
    if missing or unexpected:
        print(
            "Market Spread output is wrong: %d missing, %d unexpected"
            % (sum(missing.values()), sum(unexpected.values()))
        )
        return 1
    verdicts = collections.Counter(r.split(b": ", 1)[1].decode() for r in received.elements())
    print(
        "Market Spread output is correct: %s"
        % ", ".join("%d %s" % (n, v) for v, n in sorted(verdicts.items()))
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
