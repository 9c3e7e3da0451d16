"""Opening a PostgreSQL store: the key check first, then the migrations, by one
instance at a time under an advisory lock.

Nothing is written before the key is known to be this store's: a database whose key check
does not open with our key (:class:`WrongKeyError`), or whose schema is newer than ours
(:class:`StoreNewerError`), is refused while it is exactly as it was. Then, if the schema
is behind, the opener takes :data:`~haasd.pgstore._sql.MIGRATION_LOCK` (session level),
reads the version again — another instance may have migrated meanwhile — and runs each
missing migration in a transaction of its own; the first also seals the key check.
"""

from __future__ import annotations

from typing import Any

import psycopg

from haasd.crypto import Sealer
from haasd.errors import DecryptError, StoreCorruptError, StoreNewerError, WrongKeyError
from haasd.pgstore._database import Database
from haasd.pgstore._sql import (
    INSERT_META,
    MIGRATION_LOCK,
    MIGRATIONS,
    RECORD_VERSION,
    SCHEMA_EXISTS,
    SCHEMA_VERSION,
    SELECT_META,
)
from haasd.store.schema import KEY_CHECK, KEY_CHECK_COLUMN


async def prepare(db: Database, sealer: Sealer) -> None:
    """Check the key and the version, then migrate if behind (see the module)."""
    version = await _checked_version(db, sealer)
    if version == len(MIGRATIONS):
        return
    async with db.connection("migrate") as conn:
        await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        try:
            await _migrate(db, conn, sealer)
        finally:
            await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


async def _checked_version(db: Database, sealer: Sealer) -> int:
    """The schema version (0: no store yet), once the key check opened; reads only."""
    async with db.connection("open") as conn:
        exists = await _scalar(conn, SCHEMA_EXISTS)
        if not exists:
            return 0
        version = int(await _scalar(conn, SCHEMA_VERSION))
        if version > len(MIGRATIONS):
            raise StoreNewerError(
                f"store {db.where} has schema version {version}; this haasd knows up to"
                f" {len(MIGRATIONS)}: upgrade haasd"
            )
        if version > 0:
            _check_key(db, await _scalar(conn, SELECT_META, (KEY_CHECK_COLUMN,)), sealer)
        return version


def _check_key(db: Database, blob: object, sealer: Sealer) -> None:
    if not isinstance(blob, bytes):
        raise StoreCorruptError(f"store {db.where} has no key check: not a usable haasd store")
    try:
        opened = sealer.open(blob, human_id="", column=KEY_CHECK_COLUMN)
    except DecryptError:
        raise WrongKeyError(
            f"store {db.where} was created with another key: every instance must hold the"
            " same store key (nothing was written)"
        ) from None
    if opened != KEY_CHECK:
        raise StoreCorruptError(f"store {db.where}: the key check holds an unexpected value")


async def _migrate(db: Database, conn: psycopg.AsyncConnection[Any], sealer: Sealer) -> None:
    """Under the migration lock: run what is still missing, one transaction each."""
    exists = await _scalar(conn, SCHEMA_EXISTS)
    version = int(await _scalar(conn, SCHEMA_VERSION)) if exists else 0
    if version > 0:  # another instance created it meanwhile: check its key once more
        _check_key(db, await _scalar(conn, SELECT_META, (KEY_CHECK_COLUMN,)), sealer)
    for number in range(version, len(MIGRATIONS)):
        async with conn.transaction():
            for statement in MIGRATIONS[number]:
                await conn.execute(statement)
            if number == 0:
                check = sealer.seal(KEY_CHECK, human_id="", column=KEY_CHECK_COLUMN)
                await conn.execute(INSERT_META, (KEY_CHECK_COLUMN, check))
            await conn.execute(RECORD_VERSION, (number + 1,))


async def _scalar(conn: psycopg.AsyncConnection[Any], sql: str, params: Any = ()) -> Any:
    row = await (await conn.execute(sql, params)).fetchone()
    return None if row is None else row[0]
