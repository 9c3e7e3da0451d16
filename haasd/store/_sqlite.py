"""SQLite plumbing shared by opening a store and by :class:`~haasd.store.Store`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from haasd.errors import StoreCorruptError, StoreError, StoreLockedError


def store_error_of(path: Path, what: str, exc: sqlite3.Error) -> StoreError:
    """The :class:`StoreError` a sqlite3/aiosqlite error stands for — the one mapping of
    SQLite's result codes, for the store and for ``haasd backup``/``restore``/``rekey``:
    busy or locked is :class:`StoreLockedError`, corrupt or not a database
    :class:`StoreCorruptError`, anything else :class:`StoreError`."""
    code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
    message = f"store {path}: {what} failed: {exc}"
    if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
        return StoreLockedError(f"{message} (busy: is another haasd using it?)")
    if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
        return StoreCorruptError(f"{message}; not a usable haasd store")
    if code == sqlite3.SQLITE_READONLY:
        return StoreError(
            f"{message} (read-only: haasd must write the file, its -wal and -shm beside it"
            " and their directory; check their owner and mode, and the mount)"
        )
    return StoreError(message)


@contextmanager
def translate(path: Path, what: str) -> Iterator[None]:
    """Turn sqlite3/aiosqlite errors into :class:`StoreError` subclasses, ``from`` them."""
    try:
        yield
    except sqlite3.Error as exc:
        raise store_error_of(path, what, exc) from exc
    except UnicodeDecodeError as exc:
        # SQLite's message quoted bytes of the file that are not UTF-8 (a damaged schema)
        raise StoreCorruptError(
            f"store {path}: {what} failed: its schema is not valid text; not a usable haasd store"
        ) from exc


@asynccontextmanager
async def transaction(conn: aiosqlite.Connection) -> AsyncIterator[None]:
    """``BEGIN IMMEDIATE`` … ``COMMIT``; rolled back if the body or the commit raises."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        await conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            await conn.execute("ROLLBACK")
        raise


async def scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, params))
    return rows[0][0] if rows else None
