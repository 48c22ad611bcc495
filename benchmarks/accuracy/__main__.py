"""``python -m benchmarks.accuracy``: see :mod:`benchmarks.accuracy` and ``--help``."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
