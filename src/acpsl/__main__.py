"""``python -m acpsl``: the same command line as the ``acpsl`` entry point."""

import sys

from acpsl.cli import main

if __name__ == "__main__":
    sys.exit(main())
