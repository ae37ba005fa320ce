"""`python -m scoring`: the scoring runtime's production server (see scoring/cli.py)."""

import sys

from scoring.cli import main

sys.exit(main())
