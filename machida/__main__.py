"""``python -m machida ...``: the same entry point as the ``machida`` console script."""

import sys

from machida.cli import main

if __name__ == "__main__":
    sys.exit(main())
