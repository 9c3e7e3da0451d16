"""``haasd rekey`` on PostgreSQL: every sealed value re-sealed under the new key in one
transaction — the grants' tokens, the pending consents' verifiers and, last, the key
check — so that a crash, a lost connection or a row that does not open leaves the store
exactly under the old key, and ``COMMIT`` puts it exactly under the new one.

The transaction holds the tables ``ACCESS EXCLUSIVE`` and is refused while any other
haasd is connected (:func:`haasd.pgstore._rows.exclusive`): an instance holds its key in
memory and would go on sealing under the old one. One that starts meanwhile waits for the
lock on its key check, then refuses to start with the old key, writing nothing.
"""

from __future__ import annotations

from typing import Any

import psycopg

from haasd.crypto import Sealer
from haasd.errors import StoreCorruptError
from haasd.pgstore._database import Database
from haasd.pgstore._rows import counts, exclusive
from haasd.store.schema import BOUND, KEY_CHECK_COLUMN, SEALED
from haasd.storerows import resealed_values

__all__ = ["reseal_store"]

Connection = psycopg.AsyncConnection[Any]


async def reseal_store(db: Database, old: Sealer, new: Sealer) -> tuple[int, int]:
    """Re-seal the store from ``old``'s keys to ``new``'s (see the module); how many
    grants and pending consents it holds. :class:`DecryptError` (or :class:`ValueError`)
    names the first row that does not open, and nothing is changed."""
    async with exclusive(db, "rekey") as conn:
        for table, id_column, columns in SEALED:
            await _reseal_table(conn, old, new, table, id_column, columns)
        row = await (
            await conn.execute("SELECT value FROM haasd_meta WHERE name = %s", (KEY_CHECK_COLUMN,))
        ).fetchone()
        if row is None or not isinstance(row[0], bytes):
            raise StoreCorruptError(f"store {db.where} has no key check: not a usable haasd store")
        text = old.open(row[0], human_id="", column=KEY_CHECK_COLUMN)
        check = new.seal(text, human_id="", column=KEY_CHECK_COLUMN)
        sql = "UPDATE haasd_meta SET value = %s WHERE name = %s"
        await conn.execute(sql, (check, KEY_CHECK_COLUMN))
        return await counts(conn)


async def _reseal_table(
    conn: Connection,
    old: Sealer,
    new: Sealer,
    table: str,
    id_column: str,
    columns: tuple[str, ...],
) -> int:
    """Re-seal ``columns`` of every row of ``table``, inside the caller's transaction."""
    bound_columns = BOUND.get(table, ())
    names = ", ".join((*columns, *bound_columns))
    sql = f"SELECT {id_column}, {names} FROM {table}"  # noqa: S608 - constants
    rows = await (await conn.execute(sql)).fetchall()
    n = len(columns)
    updates = [
        (*resealed_values(table, columns, old, new, row[0], row[1 : 1 + n], row[1 + n :]), row[0])
        for row in rows
    ]
    if updates:
        assignments = ", ".join(f"{column} = %s" for column in columns)
        sql = f"UPDATE {table} SET {assignments} WHERE {id_column} = %s"  # noqa: S608 - constants
        async with conn.cursor() as cursor:
            await cursor.executemany(sql, updates)
    return len(updates)
