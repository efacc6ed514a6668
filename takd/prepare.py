"""`python -m takd.prepare`: download on a login node what jobs load offline; see `takd.chain.prepare`."""

import sys

from takd.chain.prepare import main

if __name__ == "__main__":
    sys.exit(main())
