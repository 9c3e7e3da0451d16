"""``haasd move-store``: a store moved between SQLite and PostgreSQL (a throwaway cluster
of the test session's own) as a user moves it — every grant and pending consent, the
source untouched to the byte or row, an occupied target or a running source refused, and
the target's password in no output."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from factories import T0, make_grant
from pg_cluster import PgCluster, PgDatabase
from pg_configs import (
    HAAS,
    PASSWORD,
    grants,
    haasd,
    key_of,
    one_line,
    pending,
    pg_config,
    pg_grants,
    seed_pg,
    seed_sqlite,
    sqlite_config,
    sqlite_grants,
    tables,
    write_secret,
)
from previous_schema import write_previous_store

from haasd.crypto import Key, Sealer
from haasd.grants import Grant, RefreshIntent, State
from haasd.pgstore import PgStore, describe
from haasd.store import Store, instance_lock


def varied() -> list[Grant]:
    """Grants in every state, with an intent left over, errors and served times."""
    return [
        make_grant("usr_a_plain"),
        make_grant("usr_b_served", last_served_at=T0 + 12.5, last_refresh_at=T0 + 1.25),
        make_grant(
            "usr_c_failing", state=State.RECONSENT_DUE, last_error="invalid_grant: x",
            consecutive_failures=3, next_refresh_at=T0 + 99.0,
        ),
        make_grant("usr_d_intent", intent=RefreshIntent("att_1", "0123456789ab", T0 + 7.0)),
        make_grant("usr_e_gone", state=State.NEEDS_RECONSENT, scope=("status:read",)),
    ]  # fmt: skip


def store_files(db: Path) -> dict[str, bytes]:
    """The store, its -wal and -shm (whichever exist), with their bytes."""
    names = (db.name, f"{db.name}-wal", f"{db.name}-shm")
    return {n: (db.parent / n).read_bytes() for n in names if (db.parent / n).exists()}


def lite_path(config: Path) -> Path:
    return config.parent / "state" / "haasd.db"


async def verifiers(store: Store | PgStore, state_ids: list[str]) -> list[str]:
    taken = [await store.take_pending(state_id) for state_id in state_ids]
    return [t[1].reveal() for t in taken if t is not None]


def test_a_store_moves_to_postgresql_and_back_unchanged(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    key, url, db = key_of(lite), pg_database.socket_url, lite_path(lite)
    consents = [pending(600), pending(700)]
    anyio.run(seed_sqlite, db, key, varied(), consents)
    expected = anyio.run(sqlite_grants, db, key)
    before = store_files(db)

    code, out, err = haasd("move-store", "--config", str(lite), "--to", url)

    assert (code, err) == (0, b"")
    text = out.decode()
    assert f"moved 5 grants and 2 pending consents from {db} to {describe(url)}" in text
    assert "verified: the target reads back the same 5 grants (token fingerprints)" in text
    assert f'next: set store.url = "{url}" instead of store.path' in text
    assert "never start haasd on it again" in text
    assert store_files(db) == before  # the source, to the byte
    assert anyio.run(pg_grants, url, key) == expected

    pg = pg_config(tmp_path / "pg", url, key)
    back = tmp_path / "back" / "haasd.db"
    back.parent.mkdir()
    rows_before = tables(pg_cluster, pg_database)
    code, out, err = haasd("move-store", "--config", str(pg), "--to", str(back))
    assert (code, err) == (0, b"")
    assert f"moved 5 grants and 2 pending consents from {describe(url)} to {back}" in out.decode()
    assert tables(pg_cluster, pg_database) == rows_before  # the source, to the row
    assert anyio.run(sqlite_grants, back, key) == expected

    async def verifiers_back() -> list[str]:
        async with await Store.open(back, Sealer(key)) as store:
            return await verifiers(store, [r.state_id for r, _ in consents])

    assert anyio.run(verifiers_back) == [v.reveal() for _, v in consents]


def test_an_older_sqlite_store_is_migrated_in_a_copy_only(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    db, key = lite_path(lite), key_of(lite)
    seeded = grants(4)
    write_previous_store(db, key, seeded)
    before = store_files(db)
    code, _, err = haasd("move-store", "--config", str(lite), "--to", pg_database.socket_url)
    assert (code, err) == (0, b"")
    assert store_files(db) == before
    assert anyio.run(pg_grants, pg_database.socket_url, key) == seeded


def test_an_unreadable_row_is_carried_over_as_it_is(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    db, key = lite_path(lite), key_of(lite)
    anyio.run(seed_sqlite, db, key, grants(3), [])
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE grants SET scope = 'admin' WHERE human_id = 'usr_00002'")
    code, out, _ = haasd("move-store", "--config", str(lite), "--to", pg_database.socket_url)
    assert code == 0
    assert "1 unreadable grant copied as it is (quarantined until re-consent): usr_00002" in (
        out.decode()
    )
    assert "the same 2 grants" in out.decode()
    moved = anyio.run(pg_grants, pg_database.socket_url, key)
    assert [g.state for g in moved] == [State.ACTIVE, State.ACTIVE, State.NEEDS_RECONSENT]
    assert (
        pg_cluster.psql("SELECT scope FROM grants WHERE human_id = 'usr_00002'", pg_database.name)
        == "admin"
    )


def test_a_target_that_holds_grants_is_refused_and_left_as_it_is(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    key, url = key_of(lite), pg_database.socket_url
    anyio.run(seed_sqlite, lite_path(lite), key, grants(2), [])
    anyio.run(seed_pg, url, key, [make_grant("usr_already_here")], [])
    before = tables(pg_cluster, pg_database)
    code, _, err = haasd("move-store", "--config", str(lite), "--to", url)
    assert code == 1
    line = one_line(err)
    assert f"store {describe(url)} already holds 1 grant and 0 pending consents" in line
    assert "move-store fills an empty store only" in line
    assert tables(pg_cluster, pg_database) == before

    pg = pg_config(tmp_path / "pg", url, key)
    occupied = lite_path(lite)
    files = store_files(occupied)
    code, _, err = haasd("move-store", "--config", str(pg), "--to", str(occupied))
    assert code == 1
    assert f"{occupied} already holds 2 grants" in one_line(err)
    assert store_files(occupied) == files


def test_a_target_sealed_with_another_key_is_refused(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    anyio.run(seed_sqlite, lite_path(lite), key_of(lite), grants(2), [])
    anyio.run(seed_pg, pg_database.socket_url, Key.generate(), [], [])  # empty, another key
    before = tables(pg_cluster, pg_database)
    code, _, err = haasd("move-store", "--config", str(lite), "--to", pg_database.socket_url)
    assert code == 1 and "another key" in one_line(err)
    assert tables(pg_cluster, pg_database) == before


def test_a_running_source_is_refused(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    db, key, url = lite_path(lite), key_of(lite), pg_database.socket_url
    anyio.run(seed_sqlite, db, key, grants(2), [])
    args = ("move-store", "--config", str(lite), "--to", url)

    async def while_locked() -> tuple[int, bytes, bytes]:
        async with instance_lock(db):
            return await anyio.to_thread.run_sync(lambda: haasd(*args))

    code, _, err = anyio.run(while_locked)
    assert code == 1
    assert f"haasd is running on the store {db}; stop it before `haasd move-store`" in (
        one_line(err)
    )
    assert "haasd_schema" not in tables(pg_cluster, pg_database)  # not even connected to

    anyio.run(seed_pg, url, key, grants(3), [])
    pg = pg_config(tmp_path / "pg", url, key)
    target = tmp_path / "out.db"

    async def while_connected() -> tuple[int, bytes, bytes]:
        async with await PgStore.open(url, Sealer(key)):
            args = ("move-store", "--config", str(pg), "--to", str(target))
            return await anyio.to_thread.run_sync(lambda: haasd(*args))

    code, _, err = anyio.run(while_connected)
    assert code == 1
    line = one_line(err)
    assert "1 other haasd session connected" in line and "before `haasd move-store`" in line
    assert not target.exists()


@pytest.mark.parametrize("how", ["file", "environment"])
def test_the_targets_password_reaches_no_output(
    tmp_path: Path, pg_database: PgDatabase, how: str
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    anyio.run(seed_sqlite, lite_path(lite), key_of(lite), grants(2), [])
    secret = write_secret(tmp_path / "target.password", PASSWORD)
    args = ["move-store", "--config", str(lite), "--to", pg_database.socket_url]
    if how == "file":
        code, out, err = haasd(*args, "--to-password-file", str(secret))
    else:
        code, out, err = haasd(*args, env={"HAASD_STORE_PASSWORD": PASSWORD})
    assert (code, err) == (0, b"")
    assert PASSWORD.encode() not in out
    # a password on the command line: refused in live mode, never repeated
    live = tmp_path / "live.toml"
    live.write_text(
        HAAS.replace('"test"', '"live"').replace('client_secret = "test-secret"\n', "")
        + '[store]\npath = "lite/state/haasd.db"\nkey_file = "lite/store.key"\n'
    )
    inline = pg_database.url.replace("postgres@", f"postgres:{PASSWORD}@")
    code, out, err = haasd("move-store", "--config", str(live), "--to", inline)
    assert code == 2
    assert "a password in the URL is accepted only when" in one_line(err)
    assert PASSWORD.encode() not in out + err


def test_a_move_within_one_backend_is_refused_with_what_to_use(
    tmp_path: Path, pg_database: PgDatabase
) -> None:
    lite = sqlite_config(tmp_path / "lite")
    code, _, err = haasd("move-store", "--config", str(lite), "--to", str(tmp_path / "x.db"))
    assert code == 1 and "haasd backup and haasd restore" in one_line(err)
    pg = pg_config(tmp_path / "pg", pg_database.socket_url)
    code, _, err = haasd("move-store", "--config", str(pg), "--to", pg_database.socket_url)
    assert code == 1 and "pg_dump and pg_restore" in one_line(err)
    code, _, err = haasd("move-store", "--config", str(lite), "--to", "postgresql://h:99999/db")
    assert code == 2 and "port" in one_line(err)
