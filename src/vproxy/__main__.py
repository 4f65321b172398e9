"""`python -m vproxy` runs the same entry point as the `vproxy` script."""

import sys

from vproxy.cli import main

sys.exit(main())
