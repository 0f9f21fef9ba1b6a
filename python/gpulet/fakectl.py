"""``python -m gpulet.fakectl --spec S [--state F] COMMAND``: drive a simulated node from the shell.

The commands are those of :class:`gpulet.sim.FakeNvml` (``inject-xid``, ``fall-off-bus``,
``restore-gpu``, ``reset-gpu``, ``fail``, ``delay``, ``set-metric``, ``clear-faults``, ``reset``,
``state``); ``--help`` lists them. This module only runs :func:`gpulet.sim.main`, so that
``python -m`` finds a module the package has not imported already.
"""

from __future__ import annotations

import sys

from gpulet.sim import main

if __name__ == "__main__":
    sys.exit(main())
