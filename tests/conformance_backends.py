"""The grant store backends the conformance suite runs against (tests/test_conformance.py).

Each backend knows how to open its storage (again, from a fresh object, as a restarted
daemon would), how to spoil one human's stored record the way someone without the key
would, and how to make a child process die before a write commits. Everything else the
suite asks goes through the store's own methods: each backend is one class here and one
entry in :data:`BACKENDS`. The PostgreSQL backend takes a fresh database of the session's
throwaway cluster (the ``pg_database`` fixture of conftest.py), and skips where none can
run.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Callable
from contextlib import closing
from pathlib import Path
from typing import Any, Protocol

import aiosqlite
import psycopg
import pytest

from haasd.crypto import Key, Sealer
from haasd.grantstore import GrantStore
from haasd.pgstore import PgStore
from haasd.store import Store

#: how a child process (tests/conformance_child.py) finds the backend and its storage
BACKEND_VARIABLE = "HAASD_CONFORMANCE_BACKEND"
LOCATION_VARIABLE = "HAASD_CONFORMANCE_LOCATION"
KEY_VARIABLE = "HAASD_STORE_KEY"


class Backend(Protocol):
    """One storage under test, in a directory of its own."""

    name: str

    async def open(self) -> GrantStore:
        """A store on this storage; each call a new one, as a restart would make."""
        ...

    def spoil(self, human_id: str) -> None:
        """Change ``human_id``'s stored record as someone without the key would (a later
        access expiry), so that it no longer opens."""
        ...

    def child_env(self) -> dict[str, str]:
        """The environment a child process opens this same storage with."""
        ...

    def die_before_commit(self) -> None:
        """In a child process: the next write that would commit kills the process first,
        as a power cut would, after its statements ran and before ``COMMIT``."""
        ...


class SqliteBackend:
    """The SQLite file store (:class:`haasd.store.Store`)."""

    name = "sqlite"

    def __init__(self, path: Path, key: Key) -> None:
        self.path = path
        self.key = key

    @classmethod
    def create(cls, directory: Path, request: pytest.FixtureRequest) -> SqliteBackend:
        return cls(directory / "haasd.db", Key.generate())

    @classmethod
    def from_env(cls) -> SqliteBackend:
        return cls(Path(os.environ[LOCATION_VARIABLE]), Key.from_text(os.environ[KEY_VARIABLE]))

    async def open(self) -> Store:
        return await Store.open(self.path, Sealer(self.key))

    def spoil(self, human_id: str) -> None:
        with closing(sqlite3.connect(self.path, isolation_level=None)) as conn:
            sql = "UPDATE grants SET access_expires_at = access_expires_at + 1 WHERE human_id = ?"
            conn.execute(sql, (human_id,))

    def child_env(self) -> dict[str, str]:
        return {
            BACKEND_VARIABLE: self.name,
            LOCATION_VARIABLE: str(self.path),
            KEY_VARIABLE: self.key.to_text(),
        }

    def die_before_commit(self) -> None:
        execute: Callable[..., Any] = aiosqlite.Connection.execute

        def dying(conn: aiosqlite.Connection, sql: str, *args: Any, **kwargs: Any) -> Any:
            if sql.strip().upper() == "COMMIT":
                os._exit(137)
            return execute(conn, sql, *args, **kwargs)

        aiosqlite.Connection.execute = dying  # type: ignore[method-assign]


class PostgresBackend:
    """The PostgreSQL store (:class:`haasd.pgstore.PgStore`), in a database of its own."""

    name = "postgresql"

    def __init__(self, url: str, key: Key) -> None:
        self.url = url
        self.key = key

    @classmethod
    def create(cls, directory: Path, request: pytest.FixtureRequest) -> PostgresBackend:
        database = request.getfixturevalue("pg_database")  # skips where none can run
        return cls(database.socket_url, Key.generate())

    @classmethod
    def from_env(cls) -> PostgresBackend:
        return cls(os.environ[LOCATION_VARIABLE], Key.from_text(os.environ[KEY_VARIABLE]))

    async def open(self) -> PgStore:
        return await PgStore.open(self.url, Sealer(self.key))

    def spoil(self, human_id: str) -> None:
        with psycopg.connect(self.url, autocommit=True) as conn:
            sql = "UPDATE grants SET access_expires_at = access_expires_at + 1 WHERE human_id = %s"
            conn.execute(sql, (human_id,))

    def child_env(self) -> dict[str, str]:
        return {
            BACKEND_VARIABLE: self.name,
            LOCATION_VARIABLE: self.url,
            KEY_VARIABLE: self.key.to_text(),
        }

    def die_before_commit(self) -> None:
        execute: Callable[..., Any] = psycopg.AsyncConnection.execute

        def dying(conn: psycopg.AsyncConnection[Any], query: Any, *args: Any, **kwargs: Any) -> Any:
            if isinstance(query, str) and query.strip().upper() == "COMMIT":
                os._exit(137)
            return execute(conn, query, *args, **kwargs)

        psycopg.AsyncConnection.execute = dying  # type: ignore[method-assign, assignment]


#: every backend the suite runs against, by name: how to create one in a directory (the
#: test's request gives it the fixtures it needs)
BACKENDS: dict[str, Callable[[Path, pytest.FixtureRequest], Backend]] = {
    "sqlite": SqliteBackend.create,
    "postgresql": PostgresBackend.create,
}
#: how a child process finds the backend it was started for
FROM_ENV: dict[str, Callable[[], Backend]] = {
    "sqlite": SqliteBackend.from_env,
    "postgresql": PostgresBackend.from_env,
}
