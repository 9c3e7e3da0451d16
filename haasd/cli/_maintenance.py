"""``haasd rekey``, ``backup``, ``restore`` and ``move-store``: the store as a whole (see
haasd.maintenance, haasd.pgmaintenance and haasd.storemove), on SQLite or PostgreSQL."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TextIO

from haasd.cli._common import config_of

__all__ = ["cmd_backup", "cmd_move_store", "cmd_rekey", "cmd_restore"]


def cmd_rekey(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_rekey

    return main_rekey(config_of(args), Path(args.new_key), out)


def cmd_backup(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_backup

    return main_backup(config_of(args), Path(args.out), out)


def cmd_restore(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.maintenance import main_restore

    return main_restore(config_of(args), Path(args.backup), out, force=args.force)


def cmd_move_store(args: argparse.Namespace, out: TextIO) -> int:
    from haasd.storemove import main_move_store

    password_file = Path(args.to_password_file) if args.to_password_file else None
    return main_move_store(config_of(args), args.to, password_file, out)
