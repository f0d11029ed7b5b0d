import sys

from machida_flink.cli import main

sys.exit(main())
