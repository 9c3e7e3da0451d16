"""``haasd rekey``, ``backup`` and ``restore`` on a PostgreSQL store (``store.url``).

The same promises and messages as on SQLite (:mod:`haasd.maintenance`), by PostgreSQL's
means:

- **rekey** re-seals every grant's tokens, every pending verifier and the key check in
  one transaction that holds the tables ``ACCESS EXCLUSIVE`` and is refused while any
  other haasd is connected (:mod:`haasd.pgstore._rekey`): a crash leaves the old key's
  store, ``COMMIT`` the new key's, and the new key is checked to open it afterwards. There
  is no rolling rekey: a config names one key, every instance must hold the store's, and
  one still holding the old key refuses to start on the rekeyed store, writing nothing.
- **backup** writes the same file a SQLite backup is — a haasd SQLite store, still
  sealed — from one ``REPEATABLE READ`` snapshot, while the instances run; so a backup of
  either backend restores into either, and ``haasd restore`` checks it the same way.
- **restore** checks the backup with the configured key first (a private copy opened,
  migrated if older, every token decrypted), then, in one transaction holding the tables
  ``ACCESS EXCLUSIVE``, replaces every grant and pending consent by the backup's and reads
  them back. It is refused while other haasd sessions are connected unless ``force``:
  running instances keep their own grants in memory, and must be restarted after it.

Errors name the database as :func:`haasd.pgstore.describe` does: never its password.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Final

import anyio

from haasd import storefiles
from haasd.config import Config
from haasd.crypto import Sealer
from haasd.errors import DecryptError, HaasdError, StoreError
from haasd.maintenance import (
    Contents,
    about_backup,
    backup_work_file,
    not_resealed,
    publish_backup,
    refuse_same_key,
    verify_file,
)
from haasd.parts import sealer_of
from haasd.pgstore import PgStore
from haasd.pgstore._database import Database
from haasd.pgstore._rekey import reseal_store
from haasd.pgstore._rows import connect, exclusive, read_rows, write_rows
from haasd.secret import Secret
from haasd.store import Store
from haasd.storerows import read_sqlite, write_sqlite

__all__ = ["REKEY_NOTES", "backup_database", "password_of", "rekey_database", "restore_database"]

#: what ``haasd rekey`` adds for a PostgreSQL store: the instances, and the old ciphertexts
REKEY_NOTES: Final = (
    "every instance must be given the new key before it starts again: a config names one",
    "key, so there is no rolling rekey; an instance started with the old key refuses to",
    "start on this store and writes nothing",
    "PostgreSQL may keep the old ciphertexts in dead rows until VACUUM, in its WAL and in",
    "WAL archives and pg_dump files made before now: they open with the old key only",
)
_FORCE_HINT: Final = (
    " (if they are not haasd instances, or you will restart every instance right after,"
    " pass --force)"
)


def password_of(config: Config) -> Secret | None:
    """The database password from its configured source, or None if given nowhere."""
    source = config.store.password
    return source.load_optional() if source is not None else None


async def _connect(config: Config, sealer: Sealer, *, create: bool = False) -> Database:
    url = config.store.url
    if url is None:  # pragma: no cover - the callers dispatch on store.url
        raise HaasdError("the store is not a PostgreSQL database")
    return await connect(url, sealer, password_of(config), create=create)


async def rekey_database(config: Config, old: Sealer, new: Sealer) -> tuple[str, Contents]:
    """Re-seal the store from ``old``'s keys to ``new``'s (see the module); the database
    as messages name it, and what it holds, read back with the new key."""
    refuse_same_key(old, new)
    db = await _connect(config, old)
    where = db.where
    try:
        try:
            await reseal_store(db, old, new)
        except (DecryptError, ValueError) as exc:  # a row the current key does not open
            raise not_resealed(exc) from exc
    finally:
        await db.close()
    return where, await _read_back(config, new)


async def _read_back(config: Config, sealer: Sealer) -> Contents:
    """What the store holds, as ``sealer`` opens it (its key check first)."""
    db = await _connect(config, sealer)
    async with PgStore(db, sealer) as store:
        grants = len(await store.list_grants(warn=False))
        pending = len(await store.list_pending())
        unreadable = tuple(sorted(store.unreadable))
    return Contents(grants, pending, 0, sealer.current_key_id, unreadable)


async def backup_database(config: Config, target: Path) -> tuple[str, Contents]:
    """Write the store's grants and pending consents, as they are (sealed), into a new
    SQLite store at ``target`` (mode 0600, never over a file), from one snapshot."""
    copy = backup_work_file(target)
    sealer = sealer_of(config)
    db = await _connect(config, sealer)
    where = db.where
    try:
        rows = await read_rows(db, "backup")
    finally:
        await db.close()
    try:
        async with await Store.open(copy, sealer):
            pass  # a new store: the schema, and the key check under the store's key
        await anyio.to_thread.run_sync(write_sqlite, copy, rows)
        contents = await anyio.to_thread.run_sync(publish_backup, copy, target)
    finally:
        storefiles.remove_database(copy)
    return where, contents


def _backup_size(backup: Path) -> int:
    if not backup.is_file():
        raise HaasdError(f"no backup at {backup}")
    return backup.stat().st_size


async def restore_database(
    config: Config, backup: Path, force: bool = False
) -> tuple[str, Contents]:
    """Replace every grant and pending consent of the store by ``backup``'s, once the
    configured key is seen to open it (see the module)."""
    size = _backup_size(backup)
    sealer = sealer_of(config)
    work = Path(tempfile.mkdtemp(prefix="haasd-restore-"))  # mode 0700
    try:
        copy = work / backup.name
        await anyio.to_thread.run_sync(storefiles.copy_file, backup, copy)
        try:
            contents = await verify_file(copy, sealer)  # before anything of the store changes
        except (StoreError, DecryptError) as exc:
            raise about_backup(exc, copy, backup) from exc
        rows = await anyio.to_thread.run_sync(read_sqlite, copy)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    db = await _connect(config, sealer, create=True)  # a new database: the schema first
    where = db.where
    try:
        async with exclusive(db, "restore", force=force, hint=_FORCE_HINT) as conn:
            await write_rows(conn, rows, where, replace=True)
    finally:
        await db.close()
    return where, Contents(
        contents.grants, contents.pending, size, contents.key_id, contents.unreadable
    )
