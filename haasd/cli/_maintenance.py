"""``haasd rekey``, ``backup`` and ``restore``: the store's maintenance (see haasd.maintenance)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from haasd.cli._common import config_of
from haasd.config import Config, sqlite_only

__all__ = ["cmd_backup", "cmd_rekey", "cmd_restore"]


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_rekey

    return main_rekey(_sqlite_config(args, "haasd rekey"), Path(args.new_key), out)


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_backup

    return main_backup(_sqlite_config(args, "haasd backup"), Path(args.out), out)


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_restore

    return main_restore(_sqlite_config(args, "haasd restore"), Path(args.backup), out)


def _sqlite_config(args: argparse.Namespace, command: str) -> Config:
    """The configuration, if its store is a SQLite file (PostgreSQL is not wired in yet)."""
    config = config_of(args)
    sqlite_only(config, command)
    return config
