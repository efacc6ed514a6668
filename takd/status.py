"""`python -m takd.status RUN_DIR`: one row per stage; see `takd.chain.status`."""

import sys

from takd.chain.status import main

if __name__ == "__main__":
    sys.exit(main())
