"""`python -m core.export`: an export job (core.export.job)."""

import sys

from core.export.job import main

sys.exit(main())
