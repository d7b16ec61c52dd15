"""`python -m core.cli`: the peft-studio command (core.cli.main)."""

import sys

from core.cli.main import main

sys.exit(main())
