"""``haasd run`` and ``haasd demo``: the daemon itself, and the daemon on simulated humans.

Their imports (the server, the refresher, the simulator, ...) load only when they run, so
the other commands start faster.
"""

from __future__ import annotations

import argparse
from typing import TextIO

from haasd.cli._common import config_path

__all__ = ["cmd_demo", "cmd_run"]


def cmd_demo(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.demo import main_demo

    return main_demo(args.speed, args.duration)


def cmd_run(args: argparse.Namespace, out: TextIO) -> int:
    path = config_path(args)
    from haasd.app import main_run  # the daemon's imports; other commands start faster

    return main_run(path)
