"""Keys and data: ``haasd rekey``, ``haasd backup`` and ``haasd restore``.

None of them leaves a store half-done:

- **rekey** takes the instance lock (the daemon must be stopped), copies the store beside
  itself through SQLite's backup API, re-seals every sealed value of the copy under the
  new key in one transaction (:meth:`Store.resealing`, with ``secure_delete`` so that no
  blob under the old key survives even in free space), checks that the new key opens the
  copy, and renames it over the store. A crash before the rename leaves the store
  byte-identical, so the old key still opens it; the rename is atomic. (Re-sealing in place
  would leave a window between ``COMMIT`` and the checkpoint in which the new key check is
  only in the ``-wal``, where :meth:`Store.open`'s read-only first look does not see it,
  and old ciphertexts in the ``-wal`` and free pages.)
- **backup** copies the live store in one step of the backup API: a consistent snapshot,
  taken while the daemon runs (WAL readers do not block its writer), still sealed. The
  copy is checked (``quick_check``) without the key, then linked to OUT, never over it.
- **restore** takes the instance lock, copies BACKUP beside the store and opens the copy
  with the configured key (key check, ``quick_check``, every token decrypted) before
  anything of the store is touched; only then does it replace the store. Rows of the
  backup that do not open are restored as they are and named: haasd quarantines them.
- a row that does not open stops **rekey** (nothing is re-sealed), naming the human:
  re-sealing cannot carry it over, and the old key is the only way to examine it.

The same commands on a PostgreSQL store are :mod:`haasd.pgmaintenance`'s; a backup is
the same single SQLite file whichever the store, so either restores into either.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, closing
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import aiosqlite
import anyio

from haasd import storefiles
from haasd.config import Config, SecretSource
from haasd.crypto import Key, Sealer, sealed_key_id
from haasd.errors import (
    ConfigError,
    DecryptError,
    HaasdError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNewerError,
    WrongKeyError,
)
from haasd.parts import sealer_of
from haasd.store import Store, instance_lock, store_error_of
from haasd.store.schema import APPLICATION_ID, BOUND, KEY_CHECK_COLUMN, SEALED
from haasd.storerows import resealed_values

__all__ = [
    "Contents",
    "about_backup",
    "backup_store",
    "backup_work_file",
    "load_key_file",
    "main_backup",
    "main_rekey",
    "main_restore",
    "not_resealed",
    "publish_backup",
    "refuse_same_key",
    "rekey_store",
    "restore_store",
    "stopped_daemon",
    "verify_file",
]


@dataclass(frozen=True, slots=True)
class Contents:
    """What a store file holds, as the commands report it."""

    grants: int
    pending: int
    #: bytes of the file
    size: int
    #: the key its key check is sealed with (None if it has none)
    key_id: str | None
    #: the humans whose rows do not open (quarantined when haasd loads them), if known
    unreadable: tuple[str, ...] = ()

    def describe(self) -> str:
        pending = f"{self.pending} pending consent{'' if self.pending == 1 else 's'}"
        return f"{self.grants} grant{'' if self.grants == 1 else 's'} and {pending}"

    def warning(self) -> str | None:
        """What to tell of unreadable rows, if any."""
        if not self.unreadable:
            return None
        n = len(self.unreadable)
        return (
            f"{n} grant{'' if n == 1 else 's'} unreadable (store row unreadable, quarantined"
            f" until re-consent): {', '.join(self.unreadable)}"
        )

    def details(self) -> str:
        return f"{_size(self.size)}, sealed with key {self.key_id}"


def load_key_file(path: Path) -> Key:
    """A key file written by ``haasd keygen``, refused (as a secret file) if group or
    others can read it."""
    source = SecretSource(key="--new-key", credential="", env_var="", file=path)
    try:
        return Key.from_text(source.load().reveal())
    except ValueError as exc:
        raise ConfigError(str(path), "--new-key", f"not a haasd key: {exc}") from None


# --- rekey -------------------------------------------------------------------------------


async def rekey_store(path: Path, old: Sealer, new: Sealer) -> Contents:
    """Re-seal everything in the store at ``path`` from ``old``'s keys to ``new``'s."""
    refuse_same_key(old, new)
    require_store(path)
    copy = storefiles.beside(path, "rekey")
    async with stopped_daemon(path, "rekey"):
        storefiles.remove_database(copy)  # a left-over from a crashed rekey: ours, under the lock
        try:
            async with await Store.open(path, old):
                pass  # the key, integrity and schema are checked; closing checkpoints
            await anyio.to_thread.run_sync(storefiles.copy_live, path, copy)
            async with await Store.open(copy, old) as store, store.resealing(new) as conn:
                for table, id_column, columns in SEALED:
                    await _reseal_table(conn, old, new, table, id_column, columns)
            contents = await verify_file(copy, new)
            await anyio.to_thread.run_sync(storefiles.install, copy, path, False)
        except (DecryptError, ValueError) as exc:  # a row the current key does not open
            storefiles.remove_database(copy)
            raise not_resealed(exc) from exc
        except BaseException:
            storefiles.remove_database(copy)
            raise
    return contents


def refuse_same_key(old: Sealer, new: Sealer) -> None:
    if new.current_key_id in old.key_ids:
        raise HaasdError(
            f"the new key is the store's current key (key id {new.current_key_id}); "
            "write a new one with `haasd keygen --out FILE`"
        )


def not_resealed(exc: DecryptError | ValueError) -> DecryptError:
    """A row the current key does not open, as ``rekey`` reports it."""
    return DecryptError(
        f"{exc}; nothing was re-sealed, the store is unchanged (re-consent or delete"
        " that human first: `haasd status --config` shows the unreadable rows)"
    )


async def _reseal_table(
    conn: aiosqlite.Connection,
    old: Sealer,
    new: Sealer,
    table: str,
    id_column: str,
    columns: tuple[str, ...],
) -> int:
    """Re-seal ``columns`` of every row of ``table``, inside the caller's transaction,
    bound to the same values (:data:`~haasd.store.schema.BOUND`) as before. Raises
    :class:`DecryptError` (or :class:`ValueError`, for a bound value the schema never
    holds) at the first row that does not open."""
    bound_columns = BOUND.get(table, ())
    names = ", ".join((*columns, *bound_columns))
    rows = await conn.execute_fetchall(f"SELECT {id_column}, {names} FROM {table}")  # noqa: S608 - constants

    n = len(columns)
    updates = [
        (*resealed_values(table, columns, old, new, row[0], row[1 : 1 + n], row[1 + n :]), row[0])
        for row in rows
    ]
    assignments = ", ".join(f"{column} = ?" for column in columns)
    sql = f"UPDATE {table} SET {assignments} WHERE {id_column} = ?"  # noqa: S608 - constants
    await conn.executemany(sql, updates)
    return len(updates)


def main_rekey(config: Config, new_key_file: Path, out: TextIO) -> int:
    """``haasd rekey``: print what was re-sealed and where the key must now come from."""
    old = sealer_of(config)
    new = Sealer(load_key_file(new_key_file))
    started = time.perf_counter()
    if config.store.url is None:
        where = str(config.store.path)
        contents = anyio.run(rekey_store, config.store.path, old, new)
    else:
        from haasd.pgmaintenance import rekey_database

        where, contents = anyio.run(rekey_database, config, old, new)
    seconds = time.perf_counter() - started
    print(
        f"re-sealed {contents.describe()} of {where} under key {new.current_key_id}"
        f" (was {old.current_key_id}) in {seconds:.2f} s",
        file=out,
    )
    print(
        "the old key is no longer needed; point store.key_file / HAASD_STORE_KEY / the"
        f" store.key credential at {new_key_file.absolute()}",
        file=out,
    )
    if config.store.url is not None:
        from haasd.pgmaintenance import REKEY_NOTES

        print(*(f"  {line}" for line in REKEY_NOTES), sep="\n", file=out)
    print("  (backups made before now still need the old key: keep it with them)", file=out)
    return 0


# --- backup ------------------------------------------------------------------------------


def backup_store(path: Path, target: Path) -> Contents:
    """Copy the store at ``path`` (live or not) to ``target`` (mode 0600, never replaced)."""
    require_store(path)
    if target.exists():
        raise HaasdError(f"{target} exists; haasd backup never overwrites a file")
    copy = backup_work_file(target)
    try:
        storefiles.copy_live(path, copy)
        return publish_backup(copy, target)
    finally:
        storefiles.remove_database(copy)


def backup_work_file(target: Path) -> Path:
    """Where a backup is written before it is linked to ``target``."""
    if target.exists():
        raise HaasdError(f"{target} exists; haasd backup never overwrites a file")
    if not target.parent.is_dir():
        raise HaasdError(f"cannot write {target}: no directory {target.parent}")
    return target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")


def publish_backup(copy: Path, target: Path) -> Contents:
    """Check the backup ``copy`` (single file, without the key), then link it to
    ``target``, never over a file; what it holds."""
    contents = _inspect(copy)
    try:
        os.link(copy, target)  # unlike rename, refuses to replace
    except FileExistsError:
        raise HaasdError(f"{target} exists; haasd backup never overwrites a file") from None
    except OSError as exc:
        raise HaasdError(f"cannot write {target}: {exc.strerror}") from exc
    storefiles.fsync_directory(target.parent)
    return contents


def main_backup(config: Config, target: Path, out: TextIO) -> int:
    of = ""
    if config.store.url is None:
        contents = backup_store(config.store.path, target)
    else:
        from haasd.pgmaintenance import backup_database

        where, contents = anyio.run(backup_database, config, target)
        of = f" of {where}"
    print(
        f"backed up {contents.describe()}{of} ({contents.details()}) to {target} (mode 0600)",
        file=out,
    )
    return 0


# --- restore -----------------------------------------------------------------------------


async def restore_store(path: Path, backup: Path, sealer: Sealer) -> Contents:
    """Replace the store at ``path`` by ``backup``, once ``sealer`` is seen to open it."""
    _check_backup(path, backup)
    copy = storefiles.beside(path, "restore")
    async with stopped_daemon(path, "restore"):
        storefiles.remove_database(copy)
        try:
            await anyio.to_thread.run_sync(storefiles.copy_file, backup, copy)
            try:
                contents = await verify_file(copy, sealer)  # before anything of the store changes
            except (StoreError, DecryptError) as exc:
                raise about_backup(exc, copy, backup) from exc
            await anyio.to_thread.run_sync(storefiles.install, copy, path, True)
        except BaseException:
            storefiles.remove_database(copy)
            raise
    return contents


def main_restore(config: Config, backup: Path, out: TextIO, *, force: bool = False) -> int:
    if config.store.url is None:
        where = str(config.store.path)
        contents = anyio.run(restore_store, config.store.path, backup, sealer_of(config))
    else:
        from haasd.pgmaintenance import restore_database

        where, contents = anyio.run(restore_database, config, backup, force)
    print(
        f"restored {contents.describe()} ({contents.details()}) from {backup} into {where}",
        file=out,
    )
    warning = contents.warning()
    if warning is not None:
        print(f"  {warning}", file=out)
    return 0


# --- checks ------------------------------------------------------------------------------


@asynccontextmanager
async def stopped_daemon(path: Path, command: str) -> AsyncIterator[None]:
    """Hold haasd's instance lock on ``path`` (see :func:`haasd.store.instance_lock`)."""
    if not path.parent.is_dir():
        raise StoreError(f"no directory {path.parent} for the store {path.name}")
    lock = instance_lock(path)
    try:
        await lock.__aenter__()
    except StoreLockedError as exc:
        if exc.__cause__ is not None:  # the lock file cannot be opened: says so itself
            raise
        raise StoreLockedError(
            f"haasd is running on the store {path}; stop it before `haasd {command}`,"
            " which needs the store to itself"
        ) from None
    try:
        yield
    finally:
        await lock.__aexit__(None, None, None)


async def verify_file(path: Path, sealer: Sealer) -> Contents:
    """Open ``path`` with ``sealer`` (key check, quick_check) and decrypt every token; the
    rows that do not open are named in the answer (as haasd will quarantine them)."""
    async with await Store.open(path, sealer) as store:
        grants = len(await store.list_grants(warn=False))
        pending = len(await store.list_pending())
        unreadable = tuple(sorted(store.unreadable))
    return Contents(grants, pending, os.stat(path).st_size, sealer.current_key_id, unreadable)


def _check_backup(path: Path, backup: Path) -> None:
    if not backup.is_file():
        raise HaasdError(f"no backup at {backup}")
    if path.exists() and path.samefile(backup):
        raise HaasdError(f"{backup} is the store itself")


def require_store(path: Path) -> None:
    if not path.is_file():
        raise StoreError(f"no store at {path}")


def _inspect(path: Path) -> Contents:
    """Check a single-file database (no -wal) read-only, without the key: a haasd store,
    undamaged; how many grants and pending consents, and the key it needs."""
    try:
        with closing(
            sqlite3.connect(storefiles.sqlite_uri(path, "mode=ro&immutable=1"), uri=True)
        ) as conn:
            if conn.execute("PRAGMA application_id").fetchone()[0] != APPLICATION_ID:
                raise StoreCorruptError(f"{path} is not a haasd store")
            problems = [row[0] for row in conn.execute("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                found = "; ".join(problems).replace("\n", "; ")
                raise StoreCorruptError(f"the copy is damaged: {found}")
            grants = conn.execute("SELECT count(*) FROM grants").fetchone()[0]
            sql = "SELECT count(*) FROM sqlite_master WHERE name = 'pending_consents'"
            has_pending = conn.execute(sql).fetchone()[0]  # not in schema version 1
            sql = "SELECT count(*) FROM pending_consents"
            pending = conn.execute(sql).fetchone()[0] if has_pending else 0
            sql = "SELECT value FROM meta WHERE name = ?"
            check = conn.execute(sql, (KEY_CHECK_COLUMN,)).fetchone()
    except sqlite3.Error as exc:
        raise store_error_of(path, "check", exc) from exc
    key_id = sealed_key_id(check[0]) if check and isinstance(check[0], bytes) else None
    return Contents(int(grants), int(pending), path.stat().st_size, key_id)


def about_backup(exc: HaasdError, copy: Path, backup: Path) -> StoreError:
    """``exc``, about the copy of a backup, told of the backup itself."""
    text = f"{str(exc).replace(str(copy), str(backup))}; nothing was restored"
    for kind in (WrongKeyError, StoreNewerError, StoreLockedError, StoreCorruptError):
        if isinstance(exc, kind):
            return kind(text)
    return StoreCorruptError(text) if isinstance(exc, DecryptError) else StoreError(text)


def _size(size: int) -> str:
    return f"{size / 1024:.0f} KiB" if size < 1024 * 1024 else f"{size / 1024**2:.1f} MiB"
