"""`python -m tms …` is the `tms` command."""

import sys

from tms.cli import main

sys.exit(main())
