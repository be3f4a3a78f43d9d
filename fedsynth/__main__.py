"""``python -m fedsynth``: the same command line as the ``fedsynth`` script."""

import sys

from fedsynth.cli import main

sys.exit(main())
