"""`python -m core.evaluate`: an evaluation job (core.evaluate.job)."""

import sys

from core.evaluate.job import main

sys.exit(main())
