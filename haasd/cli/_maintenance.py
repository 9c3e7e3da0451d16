"""``haasd rekey``, ``backup`` and ``restore``: the store's maintenance (see haasd.maintenance)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from haasd.cli._common import config_of

__all__ = ["cmd_backup", "cmd_rekey", "cmd_restore"]


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_rekey

    return main_rekey(config_of(args), Path(args.new_key), out)


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_backup

    return main_backup(config_of(args), Path(args.out), out)


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_restore

    return main_restore(config_of(args), Path(args.backup), out)
