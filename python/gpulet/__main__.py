"""``python -m gpulet``: the same command line as ``gpulet``."""

import sys

from gpulet.cli import main

sys.exit(main())
