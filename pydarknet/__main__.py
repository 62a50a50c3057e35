"""``python -m pydarknet ...``: the same command line as the ``pydarknet`` script."""
import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
