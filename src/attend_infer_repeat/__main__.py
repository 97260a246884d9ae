"""``python -m attend_infer_repeat``: the same command line as ``air``."""
import sys

from .cli import main

sys.exit(main())
