"""`python -m tui` is `qtui`."""

import sys

from tui.cli import main

sys.exit(main())
