"""The pool of a :class:`~haasd.pgstore.PgStore`: bounded, every statement under a
timeout and shielded from cancellation, errors as :class:`~haasd.errors.StoreError`.

A lone statement runs in autocommit, its own transaction (one round trip: the fenced
refresh finish is one); several run between an explicit ``BEGIN`` and ``COMMIT``
(:meth:`Database.transaction`). A connection a server restart broke fails the call that
holds it; the pool then checks its idle connections and replaces the broken ones, so the
next call gets a working one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from typing import Any, Final

import anyio
import psycopg
import psycopg_pool
from psycopg.conninfo import conninfo_to_dict

from haasd.errors import StoreError
from haasd.secret import Secret

Row = tuple[Any, ...]
#: the pool's connections at most: haasd's writes are few and short
POOL_SIZE: Final = 4
#: how long a statement may run (server side) and a connection may take to get
TIMEOUT: Final = 10.0
#: how long one series of the pool's reconnection attempts lasts. Their delays double
#: without a bound within it (psycopg_pool's own 300 s would leave a database that
#: came back after a minute unused for about another minute); cut short, the next
#: call begins a new series, one second apart
RECONNECT_WITHIN: Final = 4.0


def describe(url: str) -> str:
    """``url`` as it may be shown: user, host, port and database, never a password."""
    try:
        parts = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql (an unreadable url)"
    host = str(parts.get("host", "localhost"))
    port = f":{parts['port']}" if "port" in parts else ""
    user = f"{parts['user']}@" if "user" in parts else ""
    return f"postgresql://{user}{host}{port}/{parts.get('dbname', '')}"


class Database:
    """The pool, what it is called in messages, and whether it is closed."""

    __slots__ = ("_closed", "_connect", "_password", "pool", "timeout", "where")

    def __init__(
        self, pool: psycopg_pool.AsyncConnectionPool[Any], where: str, password: str, timeout: float
    ) -> None:
        self.pool = pool
        self.where = where
        self.timeout = timeout
        self._password = password
        self._closed = False
        #: the address and options the pool's connections are made with
        self._connect: tuple[str, dict[str, Any]] = ("", {})

    @classmethod
    async def connect(
        cls, url: str, *, password: Secret | None = None, size: int = POOL_SIZE,
        statement_timeout: float = TIMEOUT,
    ) -> Database:  # fmt: skip
        """A pool on ``url`` with one connection made (or :class:`StoreError`)."""
        timeout = statement_timeout
        secret = password.reveal() if password is not None else ""
        kwargs: dict[str, Any] = {
            "autocommit": True,
            "connect_timeout": max(1, round(timeout)),
            "options": f"-c statement_timeout={round(timeout * 1000)}",
            "application_name": "haasd",
        }
        if secret:
            kwargs["password"] = secret
        pool = psycopg_pool.AsyncConnectionPool(
            url, min_size=1, max_size=size, timeout=timeout, kwargs=kwargs, open=False,
            name="haasd-store", reconnect_timeout=RECONNECT_WITHIN,
        )  # fmt: skip
        db = cls(pool, describe(url), secret, timeout)
        db._connect = (url, kwargs)
        try:
            with db.translate("connect"):
                # one connection first: a refused or failed login says why at once,
                # where the pool would only say it had none after its timeout
                probe = await psycopg.AsyncConnection.connect(url, **kwargs)
                await probe.close()
                await pool.open(wait=True, timeout=timeout)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await pool.close()
            raise
        return db

    @property
    def closed(self) -> bool:
        return self._closed

    async def dedicated(self, what: str) -> psycopg.AsyncConnection[Any]:
        """A connection outside the pool, as the pool's are made (for ``LISTEN``, which
        holds its connection for good); :class:`StoreError` if none can be made."""
        self.check_open()
        with self.translate(what):
            with anyio.fail_after(self.timeout * 2):
                url, kwargs = self._connect
                return await psycopg.AsyncConnection.connect(url, **kwargs)

    def check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self.where} is closed")

    async def close(self) -> None:
        self._closed = True
        await self.pool.close()

    @contextmanager
    def translate(self, what: str) -> Iterator[None]:
        """psycopg's errors, the pool's and a timeout as :class:`StoreError` naming the
        database and what failed (never the password)."""
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            reason = f"no connection within {self.timeout:g}s ({self._scrub(str(exc))})"
            raise StoreError(self._message(what, reason)) from exc
        except psycopg.errors.QueryCanceled as exc:
            raise StoreError(self._message(what, f"timed out after {self.timeout:g}s")) from exc
        except psycopg.Error as exc:
            raise StoreError(self._message(what, self._scrub(str(exc)))) from exc
        except TimeoutError as exc:
            raise StoreError(self._message(what, f"timed out after {self.timeout:g}s")) from exc

    @asynccontextmanager
    async def connection(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """A pooled connection for ``what``: shielded, under the timeout, errors
        translated; a connection found broken makes the pool check the others."""
        self.check_open()
        broken = False
        with anyio.CancelScope(shield=True), self.translate(what):
            try:
                with anyio.fail_after(self.timeout * 2):
                    async with self.pool.connection() as conn:
                        try:
                            yield conn
                        finally:
                            broken = conn.broken
            finally:
                if broken:
                    await self.pool.check()

    @asynccontextmanager
    async def transaction(self, what: str) -> AsyncIterator[psycopg.AsyncConnection[Any]]:
        """``BEGIN`` … ``COMMIT`` on one connection; rolled back if anything raises."""
        async with self.connection(what) as conn:
            await conn.execute("BEGIN")
            try:
                yield conn
                await conn.execute("COMMIT")
            except BaseException:
                if not conn.broken and not conn.closed:
                    with anyio.CancelScope(shield=True):
                        await conn.execute("ROLLBACK")
                raise

    async def fetch(self, sql: str, params: Sequence[Any] = (), what: str = "read") -> list[Row]:
        async with self.connection(what) as conn:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

    async def execute(self, sql: str, params: Sequence[Any], what: str) -> int:
        """One statement, its own transaction; the rows it changed."""
        async with self.connection(what) as conn:
            return (await conn.execute(sql, params)).rowcount

    async def returning(self, sql: str, params: Sequence[Any], what: str) -> list[Row]:
        """One changing statement with ``RETURNING``, its own transaction; its rows."""
        return await self.fetch(sql, params, what)

    async def execute_many(self, sql: str, rows: Sequence[Sequence[Any]], what: str) -> None:
        """``sql`` once per parameter row, all in one transaction."""
        if not rows:
            return
        async with self.transaction(what) as conn, conn.cursor() as cursor:
            await cursor.executemany(sql, rows)

    def _message(self, what: str, reason: str) -> str:
        return f"store {self.where}: {what} failed: {reason}"

    def _scrub(self, text: str) -> str:
        text = " ".join(text.split())
        return text.replace(self._password, "***") if self._password else text
