"""``python -m fmlab``: the fmlab command (see fmlab/cli.py)."""
import sys

from .cli import main

sys.exit(main())
