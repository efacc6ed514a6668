"""`python -m takd <command> ...`: the umbrella command."""

import sys

from takd.cli import main

sys.exit(main())
