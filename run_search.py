#!/usr/bin/env python
"""Search how much of a pretrained network to freeze: ``python run_search.py --help``.

From a checkout this is the ``freeze-search`` command that ``pip install`` puts on the PATH (tune/cli.py); every
sub-command and flag is the same.
"""

import sys
from pathlib import Path

from tune.cli import main

ROOT = Path(__file__).resolve().parent

if __name__ == "__main__":
    sys.exit(main())
