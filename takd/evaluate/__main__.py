import sys

from takd.evaluate.cli import main

sys.exit(main())
