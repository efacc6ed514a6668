import sys

from takd.report.cli import main

sys.exit(main())
