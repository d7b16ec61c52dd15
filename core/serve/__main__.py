"""`python -m core.serve`: a serving job (core.serve.job)."""

import sys

from core.serve.job import main

sys.exit(main())
