"""The encrypted grant store: round trips, at-rest secrecy, refusing what is not ours."""

from __future__ import annotations

import shutil
import sqlite3
import stat
from collections.abc import AsyncIterator, Iterator
from contextlib import closing, contextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from factories import T0, make_grant

import haasd.store
import haasd.store._open
from haasd.crypto import Key, Sealer, fingerprint
from haasd.errors import (
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNewerError,
    UnknownHumanError,
    WrongKeyError,
)
from haasd.grants import Grant, RefreshIntent, State
from haasd.store import Store
from haasd.store.schema import APPLICATION_ID, MIGRATIONS

SCHEMA_VERSION = len(MIGRATIONS)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


@pytest.fixture
def key() -> Key:
    return Key.generate()


@pytest.fixture
def sealer(key: Key) -> Sealer:
    return Sealer(key)


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "grants.db"


@pytest.fixture
async def store(db: Path, sealer: Sealer) -> AsyncIterator[Store]:
    async with await Store.open(db, sealer) as store:
        yield store


def files_of(db: Path) -> dict[str, bytes]:
    """Every file of the store (main, -wal, -shm, anything else) by name, with its bytes."""
    return {p.name: p.read_bytes() for p in sorted(db.parent.iterdir()) if p.is_file()}


@contextmanager
def raw(db: Path) -> Iterator[sqlite3.Connection]:
    """A plain sqlite3 connection, as an attacker or a careless admin would use."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        yield conn


def test_public_names_are_sorted_and_exist() -> None:
    assert sorted(haasd.store.__all__) == haasd.store.__all__
    for name in haasd.store.__all__:
        assert hasattr(haasd.store, name)


# -- creating, reopening -----------------------------------------------------------------


async def test_new_store_is_private_versioned_wal_and_empty(db: Path, store: Store) -> None:
    assert store.path == db
    assert stat.S_IMODE((await anyio.Path(db).stat()).st_mode) == 0o600
    assert await store.count_grants() == 0
    assert await store.list_grants() == []
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID
        names = [row[0] for row in conn.execute("SELECT name FROM meta")]
        assert names == ["key_check"]


async def test_an_existing_empty_file_becomes_a_store(db: Path, sealer: Sealer) -> None:
    await anyio.Path(db).touch()
    async with await Store.open(db, sealer) as store:
        await store.put_grant(make_grant())
        assert await store.count_grants() == 1


async def test_a_store_in_a_missing_directory_is_refused(tmp_path: Path, sealer: Sealer) -> None:
    with pytest.raises(StoreError, match="cannot create store"):
        await Store.open(tmp_path / "nowhere" / "grants.db", sealer)


async def test_everything_survives_close_and_reopen(db: Path, key: Key, sealer: Sealer) -> None:
    grants = [make_grant(f"usr_{i}") for i in range(5)]
    async with await Store.open(db, sealer) as store:
        for grant in grants:
            await store.put_grant(grant)
    reloaded = Sealer(Key.from_text(key.to_text()))
    async with await Store.open(db, reloaded) as store:
        assert await store.list_grants() == grants


# -- the grant round trip ----------------------------------------------------------------


async def test_every_field_round_trips(store: Store) -> None:
    full = make_grant(
        "usr_full",
        environment="live",
        scope=("profile:read",),
        last_refresh_at=T0 + 10.5,
        state=State.RECONSENT_DUE,
        last_error="invalid_grant: the server said so",
        consecutive_failures=3,
        next_refresh_at=T0 + 2700.25,
        last_served_at=T0 + 99.0,
        intent=RefreshIntent("attempt-7", "0123456789ab", T0 + 11.0),
    )
    bare = make_grant("usr_bare", scope=())
    await store.put_grant(full)
    await store.put_grant(bare)
    assert await store.get_grant("usr_full") == full
    assert await store.get_grant("usr_bare") == bare
    assert await store.list_grants() == [bare, full]
    assert isinstance((await store.get_grant("usr_full")).state, State)


async def test_put_replaces_the_grant_of_the_same_human(store: Store) -> None:
    await store.put_grant(make_grant())
    newer = make_grant(consented_at=T0 + 86400)
    await store.put_grant(newer)
    assert await store.count_grants() == 1
    assert await store.get_grant("usr_1") == newer


async def test_put_grants_stores_many_in_one_go(store: Store) -> None:
    grants = [make_grant(f"usr_{i:03}") for i in range(250)]
    await store.put_grants(grants)
    await store.put_grants([])
    assert await store.count_grants() == 250
    assert await store.list_grants() == grants


async def test_a_batch_that_fails_midway_stores_nothing(store: Store) -> None:
    broken = make_grant("usr_2", consented_at=None)  # NOT NULL in the schema
    with pytest.raises(StoreError, match="put grants failed"):
        await store.put_grants([make_grant("usr_1"), broken, make_grant("usr_3")])
    assert await store.count_grants() == 0


@pytest.mark.parametrize(
    ("edit", "reason"),
    [
        ("state = 'bewildered'", "cannot open access_token"),  # bound: does not open
        ("last_refresh_at = 'soon'", "last_refresh_at is not a number"),
        ("consecutive_failures = -1", "consecutive_failures is not a count"),
        ("environment = x'00ff'", "environment is not text"),
        ("access_token = 'plain text'", "access_token is not a sealed value"),
        ("intent_attempt_id = 'a', intent_started_at = NULL", "intent_fingerprint is not text"),
    ],
)
async def test_a_row_that_is_not_a_grant_is_quarantined(
    db: Path, store: Store, edit: str, reason: str
) -> None:
    await store.put_grant(make_grant())
    with raw(db) as conn:
        conn.execute("PRAGMA ignore_check_constraints = ON")
        conn.execute(f"UPDATE grants SET {edit}")  # noqa: S608 - the test's own constants
    grant = await store.get_grant("usr_1")
    assert grant.state is State.NEEDS_RECONSENT
    assert grant.last_error is not None
    assert grant.last_error.startswith(f"store row unreadable: {reason}")
    assert store.unreadable == {"usr_1"}


async def test_unknown_humans_are_reported(store: Store) -> None:
    intent = RefreshIntent("a", "b", T0)
    with pytest.raises(UnknownHumanError, match="usr_nobody"):
        await store.get_grant("usr_nobody")
    with pytest.raises(UnknownHumanError):
        await store.begin_refresh("usr_nobody", intent)
    with pytest.raises(UnknownHumanError):
        await store.finish_refresh(make_grant("usr_nobody"))
    with pytest.raises(UnknownHumanError):
        await store.update_status(
            "usr_nobody",
            state=State.ACTIVE,
            last_error=None,
            consecutive_failures=0,
            next_refresh_at=None,
        )
    assert await store.count_grants() == 0


async def test_delete_says_whether_there_was_a_grant(store: Store) -> None:
    await store.put_grant(make_grant())
    assert await store.delete_grant("usr_1") is True
    assert await store.delete_grant("usr_1") is False
    with pytest.raises(UnknownHumanError):
        await store.get_grant("usr_1")


async def test_refresh_intent_is_recorded_then_cleared_with_the_new_tokens(store: Store) -> None:
    old = make_grant(last_served_at=T0 + 5)
    await store.put_grant(old)
    intent = RefreshIntent("attempt-1", fingerprint(old.refresh_token), T0 + 2700)
    await store.begin_refresh("usr_1", intent)
    assert (await store.get_grant("usr_1")).intent == intent

    refreshed = make_grant(
        scope=("status:read",),
        access_expires_at=T0 + 2700 + 3600,
        last_refresh_at=T0 + 2700,
        next_refresh_at=T0 + 2700 + 2700,
        environment="live",  # not the refresh's to change
        consented_at=T0 + 1,  # nor this
        last_served_at=None,  # nor this
        intent=intent,  # cleared regardless
    )
    await store.finish_refresh(refreshed)
    stored = await store.get_grant("usr_1")
    assert stored == replace(
        refreshed, environment="test", consented_at=T0, last_served_at=T0 + 5, intent=None
    )
    assert stored.access_token != old.access_token


async def test_status_updates_keep_or_clear_the_intent(store: Store) -> None:
    grant = make_grant()
    intent = RefreshIntent("attempt-2", fingerprint(grant.refresh_token), T0)
    await store.put_grant(replace(grant, intent=intent))
    await store.update_status(
        "usr_1",
        state=State.ACTIVE,
        last_error="network: timed out",
        consecutive_failures=1,
        next_refresh_at=T0 + 30,
    )
    expected = replace(
        grant, last_error="network: timed out", consecutive_failures=1, next_refresh_at=T0 + 30
    )
    assert await store.get_grant("usr_1") == replace(expected, intent=intent)
    await store.update_status(
        "usr_1",
        state=State.NEEDS_RECONSENT,
        last_error="invalid_grant",
        consecutive_failures=2,
        next_refresh_at=None,
        clear_intent=True,
    )
    assert await store.get_grant("usr_1") == replace(
        grant,
        state=State.NEEDS_RECONSENT,
        last_error="invalid_grant",
        consecutive_failures=2,
    )


async def test_served_times_are_batched_and_written_on_close(db: Path, sealer: Sealer) -> None:
    async with await Store.open(db, sealer) as store:
        await store.put_grant(make_grant())
        await store.put_grant(make_grant("usr_2", last_served_at=T0 + 50))
        store.mark_served("usr_1", T0 + 10)
        store.mark_served("usr_1", T0 + 5)  # an older time never wins
        store.mark_served("usr_2", T0 + 20)  # older than what is stored
        assert (await store.get_grant("usr_1")).last_served_at == T0 + 10
        assert await store.flush_served() == 2
        assert await store.flush_served() == 0
        with raw(db) as conn:
            rows = conn.execute("SELECT human_id, last_served_at FROM grants ORDER BY 1")
            assert rows.fetchall() == [("usr_1", T0 + 10), ("usr_2", T0 + 50)]
        store.mark_served("usr_1", T0 + 30)
        store.mark_served("usr_gone", T0 + 30)
    async with await Store.open(db, sealer) as store:
        assert (await store.get_grant("usr_1")).last_served_at == T0 + 30


async def test_a_closed_store_refuses_work(store: Store) -> None:
    await store.close()
    await store.close()  # idempotent
    with pytest.raises(StoreError, match="is closed"):
        await store.get_grant("usr_1")
    with pytest.raises(StoreError, match="is closed"):
        await store.put_grant(make_grant())
    with pytest.raises(StoreError, match="is closed"):
        store.mark_served("usr_1", T0)


async def test_concurrent_writers_do_not_trip_over_each_other(store: Store) -> None:
    async with anyio.create_task_group() as tg:
        for i in range(40):
            tg.start_soon(store.put_grant, make_grant(f"usr_{i:02}"))
            tg.start_soon(store.count_grants)
    assert await store.count_grants() == 40


async def test_a_cancelled_write_is_still_committed_whole(store: Store) -> None:
    grant = make_grant()
    with anyio.CancelScope() as scope:
        scope.cancel()
        await store.put_grant(grant)
    assert await store.get_grant("usr_1") == grant


async def test_a_store_locked_by_another_writer_says_so(
    db: Path, sealer: Sealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(haasd.store._open, "_BUSY_TIMEOUT", 0.05)
    async with await Store.open(db, sealer) as store:
        with raw(db) as other:
            other.execute("BEGIN IMMEDIATE")
            with pytest.raises(StoreLockedError, match="another haasd"):
                await store.put_grant(make_grant())
            store.mark_served("usr_1", T0)
            store.mark_served("usr_2", T0)
            with pytest.raises(StoreLockedError):
                await store.flush_served()
            other.execute("ROLLBACK")
        await store.put_grant(make_grant())
        assert await store.flush_served() == 2  # kept for the next try
        assert (await store.get_grant("usr_1")).last_served_at == T0


def test_grants_refuse_scopes_that_would_not_survive_storage() -> None:
    for scope in (("",), ("tasks:read status:read",), (" tasks:read",)):
        with pytest.raises(ValueError, match="scope"):
            make_grant(scope=scope)
    with pytest.raises(ValueError, match="human_id"):
        make_grant("")


def test_grant_repr_shows_no_token() -> None:
    grant = make_grant()
    assert grant.access_token.reveal() not in repr(grant)
    assert grant.refresh_token.reveal() not in repr(grant)


# -- secrecy at rest ---------------------------------------------------------------------


async def test_no_token_is_ever_on_disk_in_the_clear(db: Path, sealer: Sealer) -> None:
    tokens: list[str] = []

    def remember(grant: Grant) -> Grant:
        tokens.extend((grant.access_token.reveal(), grant.refresh_token.reveal()))
        return grant

    async with await Store.open(db, sealer) as store:
        for i in range(20):
            await store.put_grant(remember(make_grant(f"usr_{i:02}")))
        await store.put_grants(remember(make_grant(f"usr_b{i:02}")) for i in range(20))
        for i in range(0, 20, 2):
            await store.finish_refresh(remember(make_grant(f"usr_{i:02}")))
            await store.delete_grant(f"usr_b{i:02}")
        await store.put_grant(remember(make_grant("usr_00")))
        while_open = files_of(db)
        assert {"grants.db", "grants.db-wal", "grants.db-shm"} <= set(while_open)
    after_close = files_of(db)
    assert len(tokens) == 2 * (20 + 20 + 10 + 1)
    for files in (while_open, after_close):
        for name, data in files.items():
            for token in tokens:
                assert token.encode() not in data, f"a token is in the clear in {name}"
                assert token[8:].encode() not in data, f"a token body is in the clear in {name}"


@pytest.mark.parametrize(
    ("target", "source"),
    [
        (("usr_1", "access_token"), ("usr_2", "access_token")),  # same column, other row
        (("usr_1", "access_token"), ("usr_1", "refresh_token")),  # same row, other column
        (("usr_1", "refresh_token"), ("usr_2", "access_token")),
    ],
)
async def test_ciphertext_moved_to_another_place_fails_to_open(
    db: Path, sealer: Sealer, target: tuple[str, str], source: tuple[str, str]
) -> None:
    async with await Store.open(db, sealer) as store:
        await store.put_grants([make_grant("usr_1"), make_grant("usr_2")])
    with raw(db) as conn:
        conn.execute(
            f"UPDATE grants SET {target[1]} = (SELECT {source[1]} FROM grants"  # noqa: S608
            " WHERE human_id = ?) WHERE human_id = ?",
            (source[0], target[0]),
        )
    async with await Store.open(db, sealer) as store:
        moved, other = await store.list_grants()
        assert (moved.human_id, moved.state) == (target[0], State.NEEDS_RECONSENT)
        assert moved.last_error is not None
        assert f"cannot open {target[1]} of human '{target[0]}'" in moved.last_error
        assert other == await store.get_grant("usr_2")
        assert other.state is State.ACTIVE
        assert store.unreadable == {"usr_1"}


# -- refusing what is not ours, without touching it --------------------------------------


async def test_wrong_key_is_refused_and_the_store_is_left_byte_identical(
    db: Path, sealer: Sealer
) -> None:
    async with await Store.open(db, sealer) as store:
        await store.put_grants([make_grant(f"usr_{i}") for i in range(10)])
    before = files_of(db)
    wrong = Sealer(Key.generate())
    with pytest.raises(WrongKeyError) as info:
        await Store.open(db, wrong)
    message = str(info.value)
    assert "the key does not match this store" in message
    assert "use the key file it was created with" in message
    assert sealer.current_key_id in message
    assert wrong.current_key_id in message
    assert files_of(db) == before


async def test_wrong_key_leaves_a_pending_wal_untouched_too(
    tmp_path: Path, db: Path, sealer: Sealer
) -> None:
    copy = tmp_path / "copy" / db.name
    copy.parent.mkdir()
    async with await Store.open(db, sealer) as store:
        await store.put_grants([make_grant(f"usr_{i}") for i in range(10)])
        for name in (db.name, db.name + "-wal", db.name + "-shm"):
            shutil.copyfile(db.with_name(name), copy.with_name(name))
    assert copy.with_name(db.name + "-wal").stat().st_size > 0
    before = files_of(copy)
    with pytest.raises(WrongKeyError):
        await Store.open(copy, Sealer(Key.generate()))
    assert files_of(copy) == before
    async with await Store.open(copy, sealer) as store:  # as if after a crash
        assert await store.count_grants() == 10


async def test_a_file_that_is_not_sqlite_is_refused_untouched(db: Path, sealer: Sealer) -> None:
    await anyio.Path(db).write_bytes(b"these are my holiday notes, not a database\n" * 200)
    before = files_of(db)
    with pytest.raises(StoreCorruptError, match="not a database"):
        await Store.open(db, sealer)
    assert files_of(db) == before


async def test_someone_elses_sqlite_database_is_refused_untouched(db: Path, sealer: Sealer) -> None:
    with raw(db) as conn:
        conn.execute("CREATE TABLE recipes (name TEXT)")
        conn.execute("INSERT INTO recipes VALUES ('bread')")
    before = files_of(db)
    with pytest.raises(StoreCorruptError, match="not a haasd store"):
        await Store.open(db, sealer)
    assert files_of(db) == before


async def test_a_store_from_a_newer_haasd_is_refused_untouched(db: Path, sealer: Sealer) -> None:
    await (await Store.open(db, sealer)).close()
    with raw(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    before = files_of(db)
    with pytest.raises(StoreNewerError, match="newer than this haasd"):
        await Store.open(db, sealer)
    assert files_of(db) == before


async def test_a_damaged_store_is_refused(db: Path, sealer: Sealer) -> None:
    async with await Store.open(db, sealer) as store:
        await store.put_grants([make_grant(f"usr_{i:04}") for i in range(400)])
    with raw(db) as conn:
        page_size = conn.execute("PRAGMA page_size").fetchone()[0]
    data = bytearray(await anyio.Path(db).read_bytes())
    last_page = len(data) - page_size
    data[last_page : last_page + 64] = b"\xff" * 64
    await anyio.Path(db).write_bytes(bytes(data))
    before = files_of(db)
    with pytest.raises(StoreCorruptError, match="malformed"):
        await Store.open(db, sealer)
    assert files_of(db) == before


async def test_a_key_check_of_the_wrong_content_is_refused(db: Path, sealer: Sealer) -> None:
    await (await Store.open(db, sealer)).close()
    forged = sealer.seal("something else", human_id="", column="key_check")
    with raw(db) as conn:
        conn.execute("UPDATE meta SET value = ?", (forged,))
    with pytest.raises(StoreCorruptError, match="malformed key-check value"):
        await Store.open(db, sealer)


async def test_a_pending_wal_does_not_make_junk_a_store(db: Path, sealer: Sealer) -> None:
    await anyio.Path(db).write_bytes(b"junk" * 1024)
    await anyio.Path(f"{db}-wal").write_bytes(b"more junk" * 100)
    with pytest.raises(StoreCorruptError, match="not a database"):
        await Store.open(db, sealer)


async def test_a_store_without_its_key_check_is_refused(db: Path, sealer: Sealer) -> None:
    await (await Store.open(db, sealer)).close()
    with raw(db) as conn:
        conn.execute("DELETE FROM meta")
    with pytest.raises(StoreCorruptError, match="no key-check value"):
        await Store.open(db, sealer)


# -- migrations --------------------------------------------------------------------------


async def test_forward_migrations_run_in_order_once(
    db: Path, sealer: Sealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with await Store.open(db, sealer) as store:
        await store.put_grant(make_grant())
    v2 = ("ALTER TABLE grants ADD COLUMN note TEXT", "UPDATE grants SET note = 'migrated'")
    monkeypatch.setattr(haasd.store._open, "MIGRATIONS", (*MIGRATIONS, v2))
    for _ in range(2):
        async with await Store.open(db, sealer) as store:
            assert await store.count_grants() == 1
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
        assert conn.execute("SELECT note FROM grants").fetchall() == [("migrated",)]


async def test_a_failing_migration_changes_nothing(
    db: Path, sealer: Sealer, monkeypatch: pytest.MonkeyPatch
) -> None:
    await (await Store.open(db, sealer)).close()
    broken = ("ALTER TABLE grants ADD COLUMN note TEXT", "CREATE TABLE meta (x)")
    monkeypatch.setattr(haasd.store._open, "MIGRATIONS", (*MIGRATIONS, broken))
    with pytest.raises(StoreError, match=f"migration to schema version {SCHEMA_VERSION + 1}"):
        await Store.open(db, sealer)
    with raw(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        columns = [row[1] for row in conn.execute("PRAGMA table_info(grants)")]
        assert "note" not in columns
