"""`python -m core.train`: one training run (core.train.trainer)."""

import sys

from core.train.trainer import main

sys.exit(main())
