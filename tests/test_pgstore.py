"""What the PostgreSQL store promises beyond the conformance suite (tests/test_conformance.py).

On a throwaway cluster of the test session's own (tests/pg_cluster.py), skipped where none
can run: an instance with another key refuses to start and writes nothing; several
instances opening a new database at once migrate it once, under the advisory lock; a
server restart costs the call in flight and nothing after it; the tokens reach PostgreSQL
only sealed; and no message ever holds the password.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import anyio
import psycopg
import pytest
from factories import make_grant
from pg_cluster import PgCluster, PgDatabase

from haasd.crypto import Key, Sealer
from haasd.errors import StoreCorruptError, StoreError, StoreNewerError, WrongKeyError
from haasd.grants import State
from haasd.pgstore import PgStore, describe
from haasd.pgstore._sql import MIGRATION_LOCK, MIGRATIONS
from haasd.secret import Secret

PASSWORD = "pw-never-shown-7f3a"
Connection = psycopg.AsyncConnection[Any]


@asynccontextmanager
async def opened(url: str, key: Key, **options: object) -> AsyncIterator[PgStore]:
    store = await PgStore.open(url, Sealer(key), **options)  # type: ignore[arg-type]
    try:
        yield store
    finally:
        await store.close()


def contents(cluster: PgCluster, database: PgDatabase) -> str:
    """Every table of ``database`` and every row of each, as text: what a refusal must
    leave exactly as it was."""
    tables = cluster.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database.name
    ).split()
    rows = [
        cluster.psql(f'SELECT * FROM "{table}" ORDER BY 1', database.name)  # noqa: S608 - names from pg_tables
        for table in tables
    ]
    return "\n".join([f"tables: {tables}", *rows])


async def test_another_key_is_refused_and_nothing_is_written(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with opened(pg_database.socket_url, Key.generate()) as store:
        await store.put_grants([make_grant("usr_a"), make_grant("usr_b")])
    before = contents(pg_cluster, pg_database)
    assert "usr_a" in before
    with pytest.raises(WrongKeyError, match="another key") as refused:
        await PgStore.open(pg_database.socket_url, Sealer(Key.generate()))
    assert pg_database.name in str(refused.value)
    assert contents(pg_cluster, pg_database) == before


async def test_a_newer_schema_is_refused_and_left_as_it_is(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    key = Key.generate()
    async with opened(pg_database.socket_url, key):
        pass
    pg_cluster.psql("INSERT INTO haasd_schema (version) VALUES (99)", pg_database.name)
    before = contents(pg_cluster, pg_database)
    with pytest.raises(StoreNewerError, match="schema version 99"):
        await PgStore.open(pg_database.socket_url, Sealer(key))
    assert contents(pg_cluster, pg_database) == before


async def test_the_tokens_reach_postgresql_only_sealed(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    grant = make_grant("usr_a")
    async with opened(pg_database.socket_url, Key.generate()) as store:
        await store.put_grant(grant)
    dump = contents(pg_cluster, pg_database)
    assert grant.access_token.reveal() not in dump
    assert grant.refresh_token.reveal() not in dump


async def waiting_for_lock(url: str, count: int) -> None:
    """Until ``count`` sessions wait for the migration lock (PostgreSQL has no event to
    await: pg_locks is polled, for at most ten seconds)."""
    sql = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND ((classid::bigint << 32) | objid::bigint) = %s"
    )
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        with anyio.fail_after(10):
            while True:
                row = await (await conn.execute(sql, (MIGRATION_LOCK,))).fetchone()
                if row is not None and row[0] >= count:
                    return
                await anyio.sleep(0.01)


async def test_openers_at_once_migrate_once_under_the_advisory_lock(
    pg_database: PgDatabase,
) -> None:
    key, url = Key.generate(), pg_database.socket_url
    stores: list[PgStore] = []

    async def open_one() -> None:
        stores.append(await PgStore.open(url, Sealer(key)))

    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as holder:
        await holder.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
        async with anyio.create_task_group() as tg:
            tg.start_soon(open_one)
            tg.start_soon(open_one)
            await waiting_for_lock(url, 2)  # both wait: neither has created anything
            assert stores == []
            tables = await holder.execute("SELECT to_regclass('grants') IS NULL")
            assert await tables.fetchone() == (True,)
            await holder.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))
        versions = await holder.execute("SELECT version FROM haasd_schema ORDER BY version")
        assert [v for (v,) in await versions.fetchall()] == list(range(1, len(MIGRATIONS) + 1))
    first, second = stores
    try:
        await first.put_grant(make_grant("usr_a"))
        assert [g.human_id for g in await second.list_grants()] == ["usr_a"]
    finally:
        await first.close()
        await second.close()


async def test_a_server_restart_fails_the_next_call_and_the_one_after_reconnects(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    grant = make_grant("usr_a")
    async with opened(pg_database.socket_url, Key.generate(), pool_size=4) as store:
        await store.put_grant(grant)
        async with anyio.create_task_group() as tg:  # the pool grows: 4 to break
            for _ in range(16):
                tg.start_soon(store.get_grant, "usr_a")
        pg_cluster.restart()
        with pytest.raises(StoreError, match="read failed") as failed:
            await store.get_grant("usr_a")
        assert describe(pg_database.socket_url) in str(failed.value)
        assert await store.get_grant("usr_a") == grant
        pg_cluster.kill()
        pg_cluster.start()
        with pytest.raises(StoreError, match="delete grant failed"):
            await store.delete_grant("usr_a")
        assert await store.delete_grant("usr_a") is True


async def test_an_unreachable_database_is_named_without_its_password(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url = pg_database.url.replace("postgres@", f"postgres:{PASSWORD}@")
    pg_cluster.stop()
    with pytest.raises(StoreError) as refused:
        await PgStore.open(url, Sealer(Key.generate()), statement_timeout=2)
    message = str(refused.value)
    assert message.startswith(f"store postgresql://postgres@127.0.0.1:{pg_cluster.port}/")
    assert PASSWORD not in message
    assert PASSWORD not in repr(refused.value.__cause__)
    with pytest.raises(StoreError) as refused:
        await PgStore.open(pg_database.url, Sealer(Key.generate()), password=Secret(PASSWORD),
                           statement_timeout=2)  # fmt: skip
    assert PASSWORD not in str(refused.value)


async def lock_waiters(watcher: Connection, until: Callable[[int], bool]) -> None:
    """Until the number of sessions waiting for a lock satisfies ``until``; polled on the
    ``watcher`` connection, as :func:`waiting_for_lock`."""
    sql = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
    while True:
        row = await (await watcher.execute(sql)).fetchone()
        if row is not None and until(row[0]):
            return
        await anyio.sleep(0.01)


@asynccontextmanager
async def watching(url: str) -> AsyncIterator[Connection]:
    """A connection of the test's own, in autocommit, to watch the others from."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as watcher:
        yield watcher


async def test_a_write_once_begun_completes_though_its_caller_is_cancelled(
    pg_database: PgDatabase,
) -> None:
    url, new = pg_database.socket_url, make_grant("usr_a", last_refresh_at=2e9)
    async with opened(url, Key.generate()) as store:
        await store.put_grant(make_grant("usr_a"))
        async with watching(url) as watcher, await psycopg.AsyncConnection.connect(url) as other:
            await other.execute("SELECT 1 FROM grants WHERE human_id = 'usr_a' FOR UPDATE")
            async with anyio.create_task_group() as tg:
                caller = anyio.CancelScope()

                async def finish() -> None:
                    with caller:
                        await store.finish_refresh(new)

                tg.start_soon(finish)
                with anyio.fail_after(10):
                    await lock_waiters(watcher, lambda n: n > 0)  # the UPDATE is on its way
                caller.cancel()
                # a write that gave in to the cancellation would stop waiting: give it
                # the time to, before the lock is released
                with anyio.move_on_after(0.5):
                    await lock_waiters(watcher, lambda n: n == 0)
                await other.rollback()
        assert await store.get_grant("usr_a") == new


async def test_a_statement_that_waits_too_long_fails_with_a_timeout(
    pg_database: PgDatabase,
) -> None:
    url = pg_database.socket_url
    async with opened(url, Key.generate(), statement_timeout=0.5) as store:
        await store.put_grant(make_grant("usr_a"))
        async with await psycopg.AsyncConnection.connect(url) as other:
            await other.execute("SELECT 1 FROM grants WHERE human_id = 'usr_a' FOR UPDATE")
            with pytest.raises(StoreError, match=r"update status failed: timed out after 0\.5s"):
                await store.update_status(
                    "usr_a", state=State.RECONSENT_DUE,
                    last_error=None, consecutive_failures=0, next_refresh_at=None,
                )  # fmt: skip
            await other.rollback()
        await store.update_status(
            "usr_a", state=State.RECONSENT_DUE, last_error=None, consecutive_failures=0,
            next_refresh_at=None,
        )  # fmt: skip
        assert (await store.get_grant("usr_a")).state is State.RECONSENT_DUE


async def test_a_database_without_its_key_check_is_refused(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    key = Key.generate()
    async with opened(pg_database.socket_url, key):
        pass
    pg_cluster.psql("DELETE FROM haasd_meta", pg_database.name)
    with pytest.raises(StoreCorruptError, match="no key check"):
        await PgStore.open(pg_database.socket_url, Sealer(key))


async def test_the_pool_is_bounded_however_many_tasks_call_at_once(
    pg_database: PgDatabase,
) -> None:
    url = pg_database.socket_url
    sql = (
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE application_name = 'haasd' AND datname = current_database()"
    )
    async with opened(url, Key.generate(), pool_size=2) as store:
        await store.put_grants([make_grant(f"usr_{n}") for n in range(20)])
        async with watching(url) as watcher, await psycopg.AsyncConnection.connect(url) as other:
            await other.execute("LOCK TABLE grants IN EXCLUSIVE MODE")  # reads go on, writes wait
            async with anyio.create_task_group() as tg:
                for n in range(20):
                    tg.start_soon(store.delete_grant, f"usr_{n}")
                with anyio.fail_after(10):
                    await lock_waiters(watcher, lambda n: n >= 2)
                with anyio.move_on_after(0.5):  # time for a third connection, were there one
                    await lock_waiters(watcher, lambda n: n > 2)
                connections = await (await other.execute(sql)).fetchone()
                await other.rollback()
        assert connections == (2,)
        assert await store.list_grants() == []


async def test_a_database_that_acknowledges_before_it_is_durable_is_named(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    key = Key.generate()
    async with opened(pg_database.socket_url, key) as store:
        assert store.durability is None  # the default, on
    pg_cluster.psql(f'ALTER DATABASE "{pg_database.name}" SET synchronous_commit = off')
    async with opened(pg_database.socket_url, key) as store:
        assert store.durability is not None and "synchronous_commit" in store.durability
