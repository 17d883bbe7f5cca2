"""`python -m analysis SWEEP_DIR [--out DIR] [options]`."""

import sys

from .cli import main

sys.exit(main(sys.argv[1:]))
