"""Writes _expected.txt: what Counter sends for the numbers 1..N.

python _test/gen.py [N]   (N defaults to 1000)

After the k-th number of 1, 2, ..., N the count is k and the total is
k(k+1)/2, so the expected file is computed from that formula, not by adding.
"""

import struct
import sys


def main(argv):
    n = int(argv[1]) if len(argv) > 1 else 1000
    with open("_expected.txt", "wb") as f:
        for k in range(1, n + 1):
            text = ("%d,%d" % (k, k * (k + 1) // 2)).encode("ascii")
            f.write(struct.pack(">I", len(text)) + text)
    print("wrote %d records to _expected.txt" % n)


if __name__ == "__main__":
    main(sys.argv)
