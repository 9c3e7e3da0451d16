"""One SQLite connection of a :class:`~haasd.store.Store`: the lock that orders its
transactions, shielded statements, and errors as :class:`~haasd.errors.StoreError`."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import aiosqlite
import anyio

from haasd.errors import StoreError, UnknownHumanError
from haasd.store._sqlite import transaction, translate


class Database:
    """The connection, its lock and whether it is closed; safe from concurrent tasks.

    Every statement runs shielded from cancellation: aiosqlite resolves its future from
    its own thread (a cancelled one makes the event loop log ``InvalidStateError`` at
    shutdown), and a write once begun is committed or rolled back.
    """

    __slots__ = ("_closed", "_reading", "conn", "lock", "path")

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        #: held for every statement and transaction on :attr:`conn`
        self.lock = anyio.Lock()
        self._closed = False
        # the lock is held by :meth:`fetch_chunks_locked`, which only reads
        self._reading = False

    @property
    def closed(self) -> bool:
        return self._closed

    def check_open(self) -> None:
        """:class:`StoreError` once :meth:`close` has begun."""
        if self._closed:
            raise StoreError(f"store {self.path} is closed")

    async def close(self) -> None:
        """Close the connection (the caller shields it); later statements are refused."""
        self._closed = True
        with translate(self.path, "close"):
            await self.conn.close()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one query, under the lock."""
        self.check_open()
        async with self.lock:
            return await self.fetch_locked(sql, params)

    async def fetch_locked(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one query, for a caller that holds the lock already."""
        rows: list[sqlite3.Row] = []
        with anyio.CancelScope(shield=True), translate(self.path, "read"):
            rows = list(await self.conn.execute_fetchall(sql, params))
        return rows

    async def fetch_beside(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        """The rows of one query now, even while a long read holds the lock: that holder
        only reads (:meth:`fetch_chunks_locked`), so no transaction of its is open on the
        connection and this sees committed rows only — SQLite runs it between two of
        that read's chunks. Otherwise it waits for the lock, as :meth:`fetch` does."""
        self.check_open()
        if self._reading:
            return await self.fetch_locked(sql, params)
        return await self.fetch(sql, params)

    async def fetch_chunks_locked(
        self, sql: str, take: Callable[[list[sqlite3.Row]], object], size: int
    ) -> None:
        """Hand the rows of one query to ``take`` in a worker thread, ``size`` at a time, for
        a caller that holds the lock: never more than ``size`` rows in memory at once, and
        the event loop free between chunks."""
        self._reading = True
        try:
            with anyio.CancelScope(shield=True), translate(self.path, "read"):
                async with self.conn.execute(sql) as cursor:
                    rows = list(await cursor.fetchmany(size))
                    while rows:
                        # the next chunk is read (SQLite's thread) while this one is taken
                        following: list[sqlite3.Row] = []
                        async with anyio.create_task_group() as tg:
                            tg.start_soon(_fetch_into, cursor, size, following)
                            await anyio.to_thread.run_sync(take, rows)
                        rows = following
        finally:
            self._reading = False

    async def update(self, human_id: str, sql: str, params: Sequence[Any], what: str) -> None:
        """One statement that must change ``human_id``'s row: else :class:`UnknownHumanError`."""
        if await self.write(sql, [params], what) == 0:
            raise UnknownHumanError(human_id)

    async def write(self, sql: str, rows: Sequence[Sequence[Any]], what: str) -> int:
        """Run ``sql`` once per parameter row, all in one transaction; rows changed."""
        self.check_open()
        if not rows:
            return 0
        conn = self.conn
        changed = 0
        with anyio.CancelScope(shield=True), translate(self.path, what):
            async with self.lock:
                if len(rows) == 1:
                    # autocommit: a lone statement is its own transaction, synced on return
                    changed = (await conn.execute(sql, rows[0])).rowcount
                else:
                    async with transaction(conn):
                        changed = (await conn.executemany(sql, rows)).rowcount
        return changed

    async def write_returning(
        self, sql: str, params: Sequence[Any], what: str
    ) -> list[sqlite3.Row]:
        """One changing statement with ``RETURNING``: its own transaction (autocommit ends
        it once every row is read), shielded like :meth:`write`."""
        self.check_open()
        rows: list[sqlite3.Row] = []
        with anyio.CancelScope(shield=True), translate(self.path, what):
            async with self.lock:
                rows = list(await self.conn.execute_fetchall(sql, params))
        return rows


async def _fetch_into(cursor: aiosqlite.Cursor, size: int, into: list[sqlite3.Row]) -> None:
    into += await cursor.fetchmany(size)
