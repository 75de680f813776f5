"""``python -m supermix``: the same as the ``supermix`` command."""
import sys

from supermix.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
