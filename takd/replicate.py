"""`python -m takd.replicate`: evaluate the MiniLLM authors' released checkpoints; see `takd.chain.replicate`."""

import sys

from takd.chain.replicate import main

if __name__ == "__main__":
    sys.exit(main())
