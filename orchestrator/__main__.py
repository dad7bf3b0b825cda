"""``python -m orchestrator …``: the same commands as the invoke tasks, for environments without invoke."""

import sys

from .cli import main

sys.exit(main())
