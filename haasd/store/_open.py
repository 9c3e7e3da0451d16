"""Opening a store file: examined read-only and immutably first, so that a file that is
not ours is refused byte-identical; then opened read-write, checked again,
``quick_check``-ed, configured and migrated (see :mod:`haasd.store`).

Migration :data:`~haasd.store.schema.RESEAL_GRANTS_AT` re-seals every grant's tokens with
their row's bound values (:mod:`haasd.store._grants`), in its one transaction: the key is
at hand here, and checked first. A row that did not open before is left as it was; it
loads quarantined, as it would have failed to load before.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Final
from urllib.parse import quote

import aiosqlite
import anyio

from haasd.crypto import Sealer, sealed_key_id
from haasd.errors import (
    DecryptError,
    StoreCorruptError,
    StoreError,
    StoreNewerError,
    WrongKeyError,
)
from haasd.store._sqlite import scalar, transaction, translate
from haasd.store.schema import (
    APPLICATION_ID,
    KEY_CHECK,
    KEY_CHECK_COLUMN,
    MIGRATIONS,
    RESEAL_GRANTS_AT,
    grant_bound,
)

_BUSY_TIMEOUT: Final = 5.0  # seconds
#: the highest file format SQLite writes (header byte 18; above it, it only reads)
_WRITE_VERSION: Final = 2


async def open_connection(
    path: Path, sealer: Sealer, *, writer: bool = True
) -> aiosqlite.Connection:
    """The read-write connection to the store at ``path`` (created if absent or empty),
    once it is seen to be a haasd store sealed with ``sealer`` (and, for a ``writer``,
    one it can write), and migrated.

    Raises :class:`WrongKeyError`, :class:`StoreCorruptError` or
    :class:`StoreNewerError` without changing a byte of an existing file.
    """
    uri, hot_wal = await anyio.to_thread.run_sync(_prepare_file, path)
    # The immutable probe reads the main file only, ignoring any -wal, and changes
    # nothing. With a pending WAL (a crash, or another process) the main file alone may
    # look damaged or blank; then only its key and version verdicts are final.
    probe = await _connect(path, uri + "?mode=ro&immutable=1")
    try:
        await _examine(probe, sealer, path)
    except StoreCorruptError:
        if not hot_wal:
            raise
    finally:
        with anyio.CancelScope(shield=True):
            await probe.close()
    conn = await _connect(path, uri)
    try:
        await _setup(conn, sealer, path, writer=writer)
    except BaseException:
        with anyio.CancelScope(shield=True):
            await conn.close()
        raise
    return conn


def _prepare_file(path: Path) -> tuple[str, bool]:
    """Create ``path`` (mode 0600) if absent. Its SQLite URI, and whether a -wal is pending."""
    uri = "file:" + quote(str(path.absolute()))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        wal = path.with_name(path.name + "-wal")
        return uri, wal.exists() and wal.stat().st_size > 0
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror}") from exc
    os.close(fd)
    return uri, False


async def _connect(path: Path, uri: str) -> aiosqlite.Connection:
    with translate(path, "open"):
        # sqlite3's timeout is SQLite's busy_timeout: wait this long for another writer
        conn = await aiosqlite.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT)
    # haasd writes only valid UTF-8; text that is not (an edited row) must not make every
    # read of the table fail: it reads with U+FFFD instead, and such a row does not open
    conn.text_factory = _lenient_text
    return conn


def _lenient_text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


async def _examine(conn: aiosqlite.Connection, sealer: Sealer, path: Path) -> int | None:
    """Read-only checks of an existing file: its schema version, or None if it is blank."""
    with translate(path, "read"):
        app_id = await scalar(conn, "PRAGMA application_id")
        version = await scalar(conn, "PRAGMA user_version")
        names = {row[0] for row in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
        if not names and app_id == 0 and version == 0:
            return None
        if app_id != APPLICATION_ID or "meta" not in names:
            raise StoreCorruptError(f"{path} is a SQLite database but not a haasd store")
        if version < 0:  # a 32-bit field read signed: only damage sets its top bit
            raise StoreCorruptError(f"store {path} is damaged: schema version {version}")
        if version > len(MIGRATIONS):
            raise StoreNewerError(
                f"store {path} has schema version {version}, newer than this haasd's"
                f" {len(MIGRATIONS)}; upgrade haasd"
            )
        check = await scalar(conn, "SELECT value FROM meta WHERE name = ?", (KEY_CHECK_COLUMN,))
    if not isinstance(check, bytes):
        raise StoreCorruptError(f"store {path} has no key-check value")
    try:
        opened = sealer.open(check, human_id="", column=KEY_CHECK_COLUMN)
    except DecryptError as exc:
        if sealed_key_id(check) in sealer.key_ids:  # the right key: the value is damaged
            raise StoreCorruptError(
                f"store {path} is damaged: its key-check value names the key given"
                f" ({sealed_key_id(check)}) and does not open with it"
            ) from exc
        raise WrongKeyError(
            f"the key does not match this store ({path} was sealed with key"
            f" {sealed_key_id(check)}, the key given is {sealer.current_key_id});"
            " use the key file it was created with"
        ) from exc
    if opened != KEY_CHECK:
        raise StoreCorruptError(f"store {path} has a malformed key-check value")
    return int(version)


async def _setup(conn: aiosqlite.Connection, sealer: Sealer, path: Path, *, writer: bool) -> None:
    """Verify (again, authoritatively), check integrity, then configure and migrate."""
    version = await _examine(conn, sealer, path)
    with translate(path, "open"):
        if version is not None:
            problems = [row[0] for row in await conn.execute_fetchall("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                found = "; ".join(problems).replace("\n", "; ")
                raise StoreCorruptError(f"store {path} is damaged: {found}")
            if writer:
                await _try_writing(conn, path)
        mode = await scalar(conn, "PRAGMA journal_mode = WAL")
        if mode != "wal":
            raise StoreError(f"store {path}: cannot use WAL journaling (got {mode!r})")
        await conn.execute("PRAGMA synchronous = FULL")
    for step in range(version or 0, len(MIGRATIONS)):
        with translate(path, f"migration to schema version {step + 1}"):
            async with transaction(conn):
                for sql in MIGRATIONS[step]:
                    await conn.execute(sql)
                if step == 0:
                    check = sealer.seal(KEY_CHECK, human_id="", column=KEY_CHECK_COLUMN)
                    await conn.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?)", (KEY_CHECK_COLUMN, check)
                    )
                if step == RESEAL_GRANTS_AT:
                    await _bind_grant_rows(conn, sealer)
                await conn.execute(f"PRAGMA user_version = {step + 1}")
    if (version or 0) < len(MIGRATIONS):
        # Put the schema and key check into the main file, where the immutable probe reads.
        with translate(path, "checkpoint"):
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


async def _try_writing(conn: aiosqlite.Connection, path: Path) -> None:
    """Begin a write and roll it back, changing nothing: a store haasd cannot write (a
    read-only file, directory or mount) is refused at start, naming the file, rather
    than found out at the first rotation, whose new refresh token it could not keep.
    A header damaged into a file format SQLite only reads says so."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute("UPDATE meta SET value = value WHERE 0")
    except sqlite3.OperationalError:
        write_version = await anyio.to_thread.run_sync(_header_byte, path, 18)
        if write_version > _WRITE_VERSION:
            raise StoreCorruptError(
                f"store {path} is damaged: its header says file format {write_version},"
                " which SQLite only reads"
            ) from None
        raise
    finally:
        await conn.execute("ROLLBACK")


def _header_byte(path: Path, offset: int) -> int:
    with path.open("rb") as f:
        f.seek(offset)
        return f.read(1)[0]


async def _bind_grant_rows(conn: aiosqlite.Connection, sealer: Sealer) -> int:
    """Re-seal each grant's tokens, bound until now to the human id and column only, with
    the row's bound values too; how many rows. Inside the migration's transaction."""
    sql = (
        "SELECT human_id, scope, state, access_token, access_expires_at, refresh_token,"
        " refresh_expires_at FROM grants"
    )
    updates = []
    for hid, scope, state, at, at_exp, rt, rt_exp in await conn.execute_fetchall(sql):
        try:
            bound = grant_bound(scope, state, at_exp, rt_exp)
            tokens = [
                sealer.seal(sealer.open(blob, human_id=hid, column=column), human_id=hid,
                            column=column, bound=bound)
                for blob, column in ((at, "access_token"), (rt, "refresh_token"))
            ]  # fmt: skip
        except (DecryptError, ValueError, TypeError):
            continue  # unreadable already: left as evidence, quarantined when loaded
        updates.append((*tokens, hid))
    sql = "UPDATE grants SET access_token = ?, refresh_token = ? WHERE human_id = ?"
    await conn.executemany(sql, updates)
    return len(updates)
