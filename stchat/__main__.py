"""Lets `python -m stchat ...` behave exactly like the `stchat` console script."""
import sys

from stchat.cli import main

if __name__ == "__main__":
    sys.exit(main())
