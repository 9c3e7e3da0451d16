"""The instance lock: one haasd (or one ``haasd rekey``/``restore``/``import``) per store.

``<store>.lock`` beside the store file, held with ``flock`` for as long as the store is in
use; it holds the holder's pid, for the message a second one gets.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import IO

from haasd.errors import StoreError, StoreLockedError

__all__ = ["instance_lock", "lock_file_problem"]


@asynccontextmanager
async def instance_lock(store_path: Path) -> AsyncIterator[None]:
    """Hold ``<store>.lock`` exclusively: a second haasd on the same store is refused.

    The lock file is opened without following a symbolic link and used only if it is a
    regular file with one link, owned by this user or by its directory's owner: haasd
    may run as root on a directory another user can write, and must never truncate a
    file planted there as a link to another one.
    """
    path = store_path.with_name(store_path.name + ".lock")
    handle = _open_lock_file(path)
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "unknown"
            raise StoreLockedError(
                f"another haasd (pid {holder}) is running on the store {store_path}; "
                "stop it first, or give this one its own [store] path"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        yield
    finally:
        handle.close()


def _open_lock_file(path: Path) -> IO[str]:
    """``path`` opened for reading and writing (created 0600 if missing), once it is safe."""
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, 0o600)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _unsafe_lock_file(path, "a symbolic link") from None
        hint = ""
        if exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
            hint = " (haasd must write beside its store: check the directory and the mount)"
        raise StoreLockedError(f"cannot open the lock file {path}: {exc.strerror}{hint}") from exc
    try:
        st = os.fstat(fd)
        problem = lock_file_problem(st, os.geteuid(), _owner_of(path.parent))
        if problem is not None:
            raise _unsafe_lock_file(path, problem)
        os.set_blocking(fd, True)
        return os.fdopen(fd, "r+", encoding="ascii")
    except BaseException:
        os.close(fd)
        raise


def lock_file_problem(st: os.stat_result, euid: int, directory_owner: int | None) -> str | None:
    """Why an opened lock file must not be written, or None: a pure check of its stat."""
    if not stat.S_ISREG(st.st_mode):
        return "not a regular file"
    if st.st_nlink != 1:
        return f"a regular file with {st.st_nlink} hard links"
    if st.st_uid not in {euid, directory_owner}:
        return f"owned by uid {st.st_uid}, neither this user nor the directory's owner"
    return None


def _owner_of(directory: Path) -> int | None:
    try:
        return directory.stat().st_uid
    except OSError:
        return None


def _unsafe_lock_file(path: Path, problem: str) -> StoreError:
    return StoreError(
        f"the lock file {path} is {problem}: haasd writes only a regular file of its own "
        f"there. Remove it if you trust its directory, and let no other user write to "
        f"{path.parent}"
    )
