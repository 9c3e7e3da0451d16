"""A PostgreSQL store as a whole, for the maintenance commands (``haasd rekey``,
``backup``, ``restore`` and ``move-store``): one connection, a consistent read of every
row, and a transaction that has the store to itself.

The commands work through a pool of one connection (:func:`connect`), so that "another
haasd" is easy to tell: every haasd names its sessions ``haasd`` (``application_name``),
and :func:`sessions` lists those of the database but ours. A command that must not run
beside an instance (a rekey: a running instance would go on sealing under the old key)
takes the store's tables ``ACCESS EXCLUSIVE`` first (:func:`exclusive`) — an instance
that connects meanwhile waits on its key check and reads the outcome — and then refuses
if any other haasd session is connected. Only the grants and pending consents are the
store's contents; whatever else the schema holds (its version, the key check, leases)
stays as it is.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Final

import anyio
import psycopg

from haasd.crypto import Sealer
from haasd.errors import StoreError, StoreLockedError
from haasd.pgstore._database import Database
from haasd.pgstore._open import prepare
from haasd.secret import Secret
from haasd.storerows import (
    GRANT_COLUMNS,
    PENDING_COLUMNS,
    NotEmptyError,
    Rows,
    check_read_back,
    insert,
    select,
)

__all__ = [
    "connect",
    "counts",
    "exclusive",
    "read_rows",
    "read_stopped",
    "require_store",
    "running_error",
    "sessions",
    "write_rows",
]

Connection = psycopg.AsyncConnection[Any]

#: the ``application_name`` of every haasd session (:meth:`Database.connect`)
APPLICATION_NAME: Final = "haasd"
_TABLES: Final = "haasd_meta, grants, pending_consents"
_SESSIONS: Final = (
    "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
    " AND application_name = %s AND pid <> pg_backend_pid() ORDER BY pid"
)


async def connect(
    url: str, sealer: Sealer, password: Secret | None, *, create: bool = False
) -> Database:
    """One connection to the store at ``url``, its key checked and its schema current
    (:func:`~haasd.pgstore._open.prepare`); a database without a store is refused with
    :class:`StoreError` unless ``create``, when it gets the schema and our key."""
    db = await Database.connect(url, password=password, size=1)
    try:
        if not create:
            await _require_store(db)
        await prepare(db, sealer)
    except BaseException:
        await db.close()
        raise
    return db


async def require_store(url: str, password: Secret | None) -> None:
    """:class:`StoreError` unless the database at ``url`` holds a haasd store; reads only."""
    db = await Database.connect(url, password=password, size=1)
    try:
        await _require_store(db)
    finally:
        await db.close()


async def _require_store(db: Database) -> None:
    rows = await db.fetch("SELECT to_regclass('haasd_schema') IS NOT NULL", (), "open")
    if not rows[0][0]:
        raise StoreError(f"no store in {db.where}; `haasd import` or `haasd run` creates it")


#: how long sessions found connected may take to end before a command is refused (s)
ENDING_GRACE: Final = 2.0


async def sessions(conn: Connection) -> list[int]:
    """The server pids of the other haasd sessions on this database."""
    rows = await (await conn.execute(_SESSIONS, (APPLICATION_NAME,))).fetchall()
    return [int(row[0]) for row in rows]


def running_error(where: str, pids: list[int], command: str, hint: str = "") -> StoreLockedError:
    n = len(pids)
    shown = ", ".join(str(pid) for pid in pids[:5]) + (", ..." if n > 5 else "")
    return StoreLockedError(
        f"{n} other haasd session{'' if n == 1 else 's'} connected to store {where}"
        f" (server pid{'' if n == 1 else 's'} {shown}): stop every haasd instance on it"
        f" before `haasd {command}`, which needs the store to itself{hint}"
    )


async def _refuse_others(conn: Connection, where: str, command: str, hint: str) -> None:
    """:class:`StoreLockedError` if another haasd session is still there after
    :data:`ENDING_GRACE`: a process killed a moment ago leaves sessions that end within
    milliseconds, and a command run right after it must not be refused for them."""
    deadline = anyio.current_time() + ENDING_GRACE
    while others := await sessions(conn):
        if anyio.current_time() >= deadline:
            raise running_error(where, others, command, hint)
        await anyio.sleep(0.1)
        await conn.execute("SELECT pg_stat_clear_snapshot()")  # else the same answer again


@asynccontextmanager
async def exclusive(
    db: Database, command: str, *, force: bool = False, hint: str = ""
) -> AsyncIterator[Connection]:
    """A transaction holding the store's tables ``ACCESS EXCLUSIVE`` (readers too wait for
    it), refused with :class:`StoreLockedError` while another haasd is connected unless
    ``force``; committed when the body returns, rolled back if it raises."""
    async with db.transaction(command) as conn:
        if not force:  # at once, rather than after waiting for an instance's transaction
            await _refuse_others(conn, db.where, command, hint)
        await conn.execute(f"LOCK TABLE {_TABLES} IN ACCESS EXCLUSIVE MODE")
        if not force:  # and one that connected meanwhile
            await _refuse_others(conn, db.where, command, hint)
        yield conn


async def read_rows(db: Database, command: str) -> Rows:
    """Every grant and pending consent in one snapshot (``REPEATABLE READ``), while
    instances may write; refused if ``command`` needs them stopped (see
    :func:`read_stopped`)."""
    async with db.connection(f"{command}: read") as conn:
        await conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        try:
            return await _read(conn)
        finally:
            await conn.execute("ROLLBACK")


async def read_stopped(db: Database, command: str, hint: str = "") -> Rows:
    """Every grant and pending consent, refused while another haasd is connected (its
    writes after the read would be lost): the tables are held ``SHARE`` (no writer)
    while the sessions are looked at and the rows read."""
    async with db.transaction(f"{command}: read") as conn:
        await _refuse_others(conn, db.where, command, hint)
        await conn.execute(f"LOCK TABLE {_TABLES} IN SHARE MODE")
        await _refuse_others(conn, db.where, command, hint)
        return await _read(conn)


async def write_rows(conn: Connection, rows: Rows, where: str, *, replace: bool) -> None:
    """Inside the caller's transaction: put ``rows`` in (after deleting every grant and
    pending consent if ``replace``; else :class:`NotEmptyError` unless the store is
    empty), then read them back, which must give ``rows`` exactly."""
    if replace:
        await conn.execute("DELETE FROM pending_consents")
        await conn.execute("DELETE FROM grants")
    else:
        grants, pending = await counts(conn)
        if grants or pending:
            raise NotEmptyError(f"store {where}", grants, pending)
    async with conn.cursor() as cursor:
        if rows.grants:
            await cursor.executemany(insert("grants", GRANT_COLUMNS, "%s"), rows.grants)
        if rows.pending:
            sql = insert("pending_consents", PENDING_COLUMNS, "%s")
            await cursor.executemany(sql, rows.pending)
    check_read_back(f"store {where}", rows, await _read(conn))


async def counts(conn: Connection) -> tuple[int, int]:
    sql = "SELECT (SELECT count(*) FROM grants), (SELECT count(*) FROM pending_consents)"
    row = await (await conn.execute(sql)).fetchone()
    return (int(row[0]), int(row[1])) if row is not None else (0, 0)


async def _read(conn: Connection) -> Rows:
    grants = await (await conn.execute(select("grants", GRANT_COLUMNS))).fetchall()
    pending = await (await conn.execute(select("pending_consents", PENDING_COLUMNS))).fetchall()
    return Rows.of(grants, pending)
