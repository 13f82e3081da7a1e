"""``python -m wadi_lorad.trainer.tab [--port N] [--root DIR ...]``: same as ``wadi tab``."""

import sys

from .cli import main

sys.exit(main())
