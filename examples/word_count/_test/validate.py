"""Checks Word Count's output against the expected final counts.

python _test/validate.py --expected _expected.json --output received.txt

received.txt holds the sink's framed records (u32be length, then
"word => count"), as integration_test saves them. Each word's counts must
go 1, 2, 3, ... without a gap or a repeat (its outputs all come from the one
worker that owns its letter, in order), and end at the expected total.
Exit status 0 when everything matches, 1 otherwise.
"""

import argparse
import json
import struct
import sys


def records(path):
    with open(path, "rb") as f:
        data = f.read()
    pos = 0
    while pos < len(data):
        if len(data) - pos < 4:
            sys.exit("{}: ends inside a length header at byte {}".format(path, pos))
        (length,) = struct.unpack_from(">I", data, pos)
        payload = data[pos + 4 : pos + 4 + length]
        if len(payload) < length:
            sys.exit("{}: ends inside the record at byte {}".format(path, pos))
        yield payload.decode("utf-8")
        pos += 4 + length


def main():
    parser = argparse.ArgumentParser(description="Word Count validator")
    parser.add_argument("--output", required=True, help="the application's output file")
    parser.add_argument("--expected", required=True, help="JSON of the final count per word")
    args = parser.parse_args()
    with open(args.expected, encoding="utf-8") as f:
        expected = json.load(f)

    seen = {}
    problems = []
    for record in records(args.output):
        word, arrow, count = record.rpartition(" => ")
        if not arrow or not count.isdigit():
            problems.append("not a 'word => count' record: {!r}".format(record))
            continue
        if int(count) != seen.get(word, 0) + 1:
            problems.append("{!r} counted {} after {}".format(word, count, seen.get(word, 0)))
        seen[word] = int(count)
    for word in sorted(set(expected) | set(seen)):
        if expected.get(word) != seen.get(word):
            problems.append(
                "{!r}: expected {}, got {}".format(word, expected.get(word), seen.get(word))
            )
    if problems:
        print("\n".join(problems[:20]))
        print("Word counts are wrong ({} problem(s))".format(len(problems)))
        return 1
    print("Word counts are correct: {} words, {} distinct".format(sum(seen.values()), len(seen)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
