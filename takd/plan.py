"""`python -m takd.plan`: plan (and submit) a chain; see `takd.chain.cli`."""

import sys

from takd.chain.cli import main

if __name__ == "__main__":
    sys.exit(main())
