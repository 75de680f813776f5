"""``python -m supermix``: the same as the ``supermix`` command."""
import sys

from supermix.cli import main

if __name__ == "__main__":
    sys.exit(main())
