"""SQLite plumbing shared by opening a store and by :class:`~haasd.store.Store`."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from haasd.errors import StoreCorruptError, StoreError, StoreLockedError


@contextmanager
def translate(path: Path, what: str) -> Iterator[None]:
    """Turn sqlite3/aiosqlite errors into :class:`StoreError` subclasses, ``from`` them."""
    try:
        yield
    except sqlite3.Error as exc:
        code = exc.sqlite_errorcode & 0xFF
        message = f"store {path}: {what} failed: {exc}"
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreLockedError(f"{message} (is another haasd using it?)") from exc
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise StoreCorruptError(f"{message}; refusing to use it") from exc
        raise StoreError(message) from exc


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
