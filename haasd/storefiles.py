"""Store files on disk, for the commands that copy and replace them (``haasd backup``,
``restore`` and ``rekey``): a private new file, a consistent copy of a live database, an
atomic replacement that leaves no ``-wal`` behind, and the fsyncs that make each durable.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final
from urllib.parse import quote

from haasd.errors import HaasdError, StoreError, StoreLockedError
from haasd.store import store_error_of

__all__ = [
    "beside",
    "copy_file",
    "copy_live",
    "fsync_directory",
    "install",
    "remove_database",
    "sqlite_uri",
]

_BUSY_TIMEOUT: Final = 5.0  # seconds, as the store's own connection waits


def beside(path: Path, what: str) -> Path:
    """The work file of ``what`` beside the store: one name, used under the lock only."""
    return path.with_name(f".{path.name}.{what}.tmp")


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def sqlite_uri(path: Path, query: str) -> str:
    return f"file:{quote(str(path.absolute()))}?{query}"


def _create_private(path: Path) -> int:
    """A new file at ``path``, mode 0600 from its creation, never through a link: its
    descriptor, for writing."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        return os.open(path, flags, 0o600)
    except OSError as exc:
        raise HaasdError(f"cannot create {path}: {exc.strerror}") from exc


def copy_live(source: Path, target: Path) -> None:
    """A consistent copy of the database ``source`` (and its -wal) into a new file."""
    os.close(_create_private(target))
    try:
        # mode=rw: never create a store; read only, yet it tidies the -wal up if last out
        with (
            closing(
                sqlite3.connect(sqlite_uri(source, "mode=rw"), uri=True, timeout=_BUSY_TIMEOUT)
            ) as src,
            closing(sqlite3.connect(sqlite_uri(target, "mode=rw"), uri=True)) as dst,
        ):
            src.backup(dst)  # in one step: one read transaction, one snapshot
    except sqlite3.Error as exc:
        raise store_error_of(source, "copy", exc) from exc
    _fsync(target)


def copy_file(source: Path, target: Path) -> None:
    """Copy ``source`` to a new private file ``target``, through the descriptor that
    created it (never ``target`` opened again by its path)."""
    dst = os.fdopen(_create_private(target), "wb")
    try:
        with dst, source.open("rb") as src:
            shutil.copyfileobj(src, dst)
    except OSError as exc:
        raise HaasdError(f"cannot copy {source} to {target}: {exc.strerror}") from exc
    _fsync(target)


def install(copy: Path, path: Path, replace_stale: bool) -> None:
    """Rename ``copy`` over ``path``, after removing ``path``'s -wal and -shm.

    They go first (the -wal before the -shm): a -wal left beside the new file would be
    replayed into it. For a rekey, a -wal left after our last connection closed means
    another process has the store open; then nothing changes. For a restore, a -wal a
    killed haasd left is checkpointed into the store first: a crash before the rename
    leaves the store whole.
    """
    if any(p.exists() for p in _sidecars(copy)):
        raise StoreError(f"{copy} is still in use; nothing was replaced")
    _fsync(copy)
    wal, shm = _sidecars(path)
    if not replace_stale and wal.exists():
        raise StoreLockedError(
            f"another process has the store open ({wal.name} exists); close it and retry"
        )
    if wal.exists():
        _fold_wal(path)
    try:
        if path.exists():
            st = path.stat()
            if (st.st_uid, st.st_gid) != (os.getuid(), os.getgid()):
                os.chown(copy, st.st_uid, st.st_gid)  # run as root: still the daemon's
        wal.unlink(missing_ok=True)
        shm.unlink(missing_ok=True)
        os.replace(copy, path)
    except OSError as exc:
        raise HaasdError(f"cannot replace {path}: {exc.strerror}") from exc
    fsync_directory(path.parent)


def _fold_wal(path: Path) -> None:
    """Checkpoint the -wal a killed haasd left into the store's own file, so that a crash
    after the -wal is removed and before the rename leaves the store as it was, not as
    it was at its last checkpoint. Best effort: a store too damaged for that is being
    replaced anyway."""
    try:
        with closing(sqlite3.connect(sqlite_uri(path, "mode=rw"), uri=True)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall()
    except sqlite3.Error:
        pass


def remove_database(path: Path) -> None:
    for p in (path, *_sidecars(path), path.with_name(path.name + "-journal")):
        p.unlink(missing_ok=True)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
