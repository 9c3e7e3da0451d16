"""A small file system of the test's own, to fill up and to make read-only: a tmpfs
mounted on a temporary directory (root only; the tests skip, saying why, elsewhere)."""

from __future__ import annotations

import errno
import os
import shutil
import sqlite3
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import pytest

MOUNT = shutil.which("mount")
UMOUNT = shutil.which("umount")


@contextmanager
def tmpfs(size: str = "2m") -> Iterator[Path]:
    """A fresh tmpfs of ``size`` bytes (``mount -o size=``); skips when none can be mounted.
    Its path is short enough for a Unix socket in it."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if MOUNT is None or UMOUNT is None:
        pytest.skip("no mount(8) here")
    path = Path(tempfile.mkdtemp(prefix="hdfs", dir="/tmp"))
    mounted = subprocess.run(
        [MOUNT, "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0:
        path.rmdir()
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([UMOUNT, "-l", str(path)], check=False)
        shutil.rmtree(path, ignore_errors=True)


def remount(path: Path, mode: str) -> None:
    """``mode``: "ro" or "rw"."""
    assert MOUNT is not None
    subprocess.run([MOUNT, "-o", f"remount,{mode}", str(path)], check=True)


def fill(filler: Path) -> int:
    """Write ``filler`` until its file system has no byte left; how many were written."""
    written = 0
    with filler.open("ab", buffering=0) as f:
        for chunk in (1 << 16, 1 << 12, 1 << 8, 1):
            data = b"\0" * chunk
            while True:
                try:
                    written += f.write(data) or 0
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    return written


def checkpoint_truncate(db: Path) -> None:
    """Empty the store's WAL into the main file (from a second connection, as
    ``sqlite3 haasd.db 'PRAGMA wal_checkpoint(TRUNCATE)'`` would): its next write needs
    new space on the disk, not a reused frame."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    assert busy == 0, "the checkpoint was blocked"


def intent_of(db: Path, human_id: str) -> str | None:
    """The refresh intent the store file holds for ``human_id`` (read-only)."""
    uri = f"file:{db}?mode=ro"
    with closing(sqlite3.connect(uri, uri=True)) as conn:
        row = conn.execute(
            "SELECT intent_attempt_id FROM grants WHERE human_id = ?", (human_id,)
        ).fetchone()
    assert row is not None
    value: str | None = row[0]
    return value
