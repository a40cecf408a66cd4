"""`python -m sirius_local.server [MODEL] [options]`: the same as `sirius-local serve`."""

import sys

from ..cli import main

sys.exit(main(["serve", *sys.argv[1:]]))
