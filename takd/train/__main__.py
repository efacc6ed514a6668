import sys

from takd.train.cli import main

sys.exit(main())
