"""``haasd move-store``: the configured store copied into an empty one on the other
backend — a SQLite file into a PostgreSQL database, or back.

Every grant and pending consent is copied as it is, ciphertext and all: both backends
seal with the same associated data (:mod:`haasd.storerows`), so the same key opens the
copy, and a row that does not open is carried over as the evidence it is (quarantined
there as here). The source is never written: a SQLite source is read from a private
copy taken through SQLite's backup API under its instance lock (so not while a daemon
runs on it; an older schema is migrated in the copy only); a PostgreSQL source is read
holding its tables ``SHARE``, refused while another haasd is connected to it.

The target must hold no grant and no pending consent (a SQLite target is created if
absent, under its own instance lock; a PostgreSQL one gets the schema and the key
check if new, and must otherwise be sealed with the same key). The rows go in in one
transaction, read back before it commits, and once committed the target is opened with
the key and must read the same grants to the same token fingerprints, the same
unreadable ones and the same pending consents as the source.

The target's password never comes from the command line in live mode: ``--to-password-
file``, else ``HAASD_STORE_PASSWORD`` or the systemd credential ``store.password``.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import anyio

from haasd import storefiles
from haasd.config import Config, SecretSource
from haasd.config._store import parse_store_url, split_password
from haasd.crypto import Sealer
from haasd.errors import ConfigError, HaasdError, StoreError
from haasd.grantstore import GrantStore
from haasd.maintenance import require_store, stopped_daemon
from haasd.parts import sealer_of
from haasd.pgmaintenance import password_of
from haasd.pgstore import PgStore
from haasd.pgstore._rows import connect, exclusive, read_stopped, write_rows
from haasd.secret import Secret
from haasd.store import Store
from haasd.storerows import NotEmptyError, Rows, Summary, read_sqlite, summary_of, write_sqlite

__all__ = ["Moved", "main_move_store", "move_store"]


@dataclass(frozen=True, slots=True)
class Moved:
    """What was moved, from where to where (as messages name them)."""

    source: str
    target: str
    rows: Rows
    summary: Summary


@dataclass(frozen=True, slots=True)
class _Target:
    """Where to: a PostgreSQL URL (without password) and its password, or a SQLite file."""

    url: str | None
    password: Secret | None
    path: Path


def target_of(config: Config, text: str, password_file: Path | None) -> _Target:
    """``--to``: a ``postgresql://`` URL or a path; refused if on the config's backend."""
    if text.lower().startswith("postgresql:"):
        try:
            url = parse_store_url(text)
        except ValueError as exc:
            raise ConfigError("command line", "--to", str(exc)) from None
        url, inline = split_password(url)
        if inline is not None and config.haas.environment != "test":
            raise ConfigError(
                "command line",
                "--to",
                'a password in the URL is accepted only when haas.environment = "test"; use'
                " --to-password-file, HAASD_STORE_PASSWORD or the systemd credential"
                " store.password",
            )
        if config.store.url is not None:
            raise HaasdError(
                "the store is PostgreSQL already: to copy it into another database, use"
                " pg_dump and pg_restore (docs/postgresql-maintenance.md)"
            )
        return _Target(url, _password(inline, password_file), Path())
    if password_file is not None:
        raise ConfigError("command line", "--to-password-file", "only for a postgresql:// --to")
    if config.store.url is None:
        raise HaasdError(
            "the store is a SQLite file already: --to takes a postgresql:// URL (to copy a"
            " SQLite store, use haasd backup and haasd restore)"
        )
    return _Target(None, None, Path(text))


def _password(inline: str | None, password_file: Path | None) -> Secret | None:
    if password_file is not None:  # named on the command line: that file, nothing else
        return SecretSource("--to-password-file", "store.password", "", password_file).load()
    source = SecretSource(
        key="--to-password-file",
        credential="store.password",
        env_var="HAASD_STORE_PASSWORD",
        inline=Secret(inline) if inline is not None else None,
        environ=os.environ,
    )
    return source.load_optional()


async def move_store(config: Config, target: _Target) -> Moved:
    """Copy the configured store into ``target`` (see the module)."""
    sealer = sealer_of(config)
    if target.url is not None:
        return await _sqlite_to_postgresql(config.store.path, target.url, target.password, sealer)
    if config.store.url is None:  # pragma: no cover - target_of refuses it
        raise HaasdError("the store is a SQLite file already")
    password = password_of(config)
    return await _postgresql_to_sqlite(config.store.url, password, target.path, sealer)


async def _sqlite_to_postgresql(
    source: Path, url: str, password: Secret | None, sealer: Sealer
) -> Moved:
    async with _sqlite_source(source, sealer) as rows:
        expected = summary_of(rows, sealer)
        db = await connect(url, sealer, password, create=True)
        where = db.where
        try:
            async with exclusive(db, "move-store") as conn:
                await write_rows(conn, rows, where, replace=False)
        except NotEmptyError as exc:
            raise HaasdError(
                f"{exc}; move-store fills an empty store only: name another database, or"
                " drop this one's haasd tables if its grants are not wanted"
            ) from None
        finally:
            await db.close()
        async with PgStore(await connect(url, sealer, password), sealer) as store:
            read = await _read_back(store)
    _compare(expected, read, where)
    return Moved(str(source), where, rows, expected)


@asynccontextmanager
async def _sqlite_source(path: Path, sealer: Sealer) -> AsyncIterator[Rows]:
    """The rows of the SQLite store at ``path``, read from a private copy, under its
    instance lock for as long as the caller copies them."""
    require_store(path)
    copy = storefiles.beside(path, "move")
    async with stopped_daemon(path, "move-store"):
        storefiles.remove_database(copy)  # a left-over of a crashed move: ours, locked
        try:
            await anyio.to_thread.run_sync(storefiles.copy_live, path, copy)
            async with await Store.open(copy, sealer):
                pass  # the key, integrity, the schema (migrated in the copy only)
            rows = await anyio.to_thread.run_sync(read_sqlite, copy)
        finally:
            storefiles.remove_database(copy)
        yield rows


async def _read_back(store: GrantStore) -> Summary:
    """What the key reads in the target, through the store as haasd reads it."""
    grants = await store.list_grants(warn=False)
    return Summary.of_grants(grants, [record.state_id for record in await store.list_pending()])


async def _postgresql_to_sqlite(
    url: str, password: Secret | None, path: Path, sealer: Sealer
) -> Moved:
    db = await connect(url, sealer, password)
    where = db.where
    try:
        rows = await read_stopped(db, "move-store", " (their writes after the copy would be lost)")
    finally:
        await db.close()
    expected = summary_of(rows, sealer)
    async with stopped_daemon(path, "move-store"):
        created = not _exists(path)
        try:
            async with await Store.open(path, sealer):
                pass  # a new store, or one the key opens (nothing else is written to)
            await anyio.to_thread.run_sync(write_sqlite, path, rows)
        except NotEmptyError as exc:
            message = f"{exc}; move-store fills an empty store only: name a new file"
            raise HaasdError(message) from None
        except BaseException:
            if created:
                storefiles.remove_database(path)
            raise
        async with await Store.open(path, sealer) as store:
            read = await _read_back(store)
    _compare(expected, read, str(path))
    return Moved(where, str(path), rows, expected)


def _exists(path: Path) -> bool:
    return path.exists()


def _compare(expected: Summary, read: Summary, where: str) -> None:
    difference = expected.difference(read)
    if difference is not None:
        raise StoreError(
            f"{where} does not read back as the source: {difference}; the source is unchanged"
        )


def main_move_store(config: Config, to: str, password_file: Path | None, out: TextIO) -> int:
    """``haasd move-store``: copy, check, and say what to do next."""
    target = target_of(config, to, password_file)
    started = time.perf_counter()
    moved = anyio.run(move_store, config, target)
    seconds = time.perf_counter() - started
    print(
        f"moved {moved.rows.describe()} from {moved.source} to {moved.target} in {seconds:.2f} s",
        file=out,
    )
    s = moved.summary
    print(
        f"  verified: the target reads back the same {len(s.fingerprints)} grant"
        f"{'' if len(s.fingerprints) == 1 else 's'} (token fingerprints) and"
        f" {len(s.pending)} pending consent{'' if len(s.pending) == 1 else 's'}",
        file=out,
    )
    if s.unreadable:
        print(
            f"  {len(s.unreadable)} unreadable grant{'' if len(s.unreadable) == 1 else 's'}"
            f" copied as {'it is' if len(s.unreadable) == 1 else 'they are'} (quarantined"
            f" until re-consent): {', '.join(s.unreadable)}",
            file=out,
        )
    if target.url is not None:
        use = f'store.url = "{target.url}" instead of store.path'
        keys = "  (its password from store.password_file, HAASD_STORE_PASSWORD or the"
        keys += " store.password credential; the same store key)"
    else:
        use = f'store.path = "{target.path.absolute()}" instead of store.url'
        keys = "  (without store.password_file; the same store key)"
    print(f"next: set {use} in the config, then start haasd", file=out)
    print(keys, file=out)
    print(
        f"the source is unchanged: never start haasd on it again ({moved.source});"
        " the two would diverge as refresh tokens rotate",
        file=out,
    )
    return 0
