"""Writes _expected.json: how many times each word of count_this.txt occurs.

python _test/expected.py [count_this.txt [_expected.json]]

It finds the words with a regular expression rather than with the
application's own splitting, so the two are checked against each other.
"""

import collections
import json
import re
import sys

WORD = re.compile(r"[a-z0-9]+(?:['-][a-z0-9]+)*")


def counts(text):
    return collections.Counter(WORD.findall(text.lower()))


def main(argv):
    source = argv[1] if len(argv) > 1 else "count_this.txt"
    target = argv[2] if len(argv) > 2 else "_expected.json"
    with open(source, encoding="utf-8") as f:
        totals = counts(f.read())
    with open(target, "w", encoding="utf-8") as f:
        json.dump(dict(sorted(totals.items())), f, indent=1)
        f.write("\n")
    print("{}: {} words, {} distinct".format(target, sum(totals.values()), len(totals)))


if __name__ == "__main__":
    main(sys.argv)
