"""`python -m homec ...`: the same as the `homec` command."""

import sys

from homec.cli import main

if __name__ == "__main__":
    sys.exit(main())
