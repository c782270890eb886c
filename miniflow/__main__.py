"""``python -m miniflow``: the same command line as the ``miniflow`` program."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
