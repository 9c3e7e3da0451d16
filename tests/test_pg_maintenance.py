"""``haasd import``, ``status --config``, ``rekey``, ``backup`` and ``restore`` on a
PostgreSQL store (a throwaway cluster of the test session's own), run as a user runs them:
the same promises as on SQLite — nothing half-done, nothing written under a wrong key,
nothing replaced that the key does not open — and the password in no output."""

from __future__ import annotations

import json
import time
from pathlib import Path

import anyio
import psycopg
import pytest
from factories import make_grant
from pg_cluster import PgCluster, PgDatabase
from pg_configs import (
    PASSWORD,
    grants,
    haasd,
    key_of,
    one_line,
    pending,
    pg_config,
    pg_grants,
    python,
    seed_pg,
    seed_sqlite,
    sqlite_config,
    sqlite_grants,
    tables,
    write_key,
)

from haasd.cli import main
from haasd.config import load_config
from haasd.crypto import Key, Sealer
from haasd.errors import WrongKeyError
from haasd.pgstore import PgStore, describe

ANSWER = {
    "access_token": "haas_at_PgMaintenanceAccess01",
    "token_type": "Bearer",
    "expires_in": 3600,
    "refresh_token": "haas_rt_PgMaintenanceRefresh01",
    "scope": "tasks:dispatch status:read",
    "human_id": "usr_maria_42",
}


@pytest.fixture
def config(tmp_path: Path, pg_database: PgDatabase) -> Path:
    return pg_config(tmp_path, pg_database.socket_url)


def test_import_and_status_on_postgresql(
    config: Path, pg_database: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    answer = config.parent / "answer.json"
    answer.write_text(json.dumps(ANSWER))
    assert main(["import", "--config", str(config), str(answer)]) == 0
    assert "imported a grant for usr_maria_42" in capsys.readouterr().out
    assert main(["import", "--config", str(config), str(answer)]) == 0
    assert "replaced the grant of usr_maria_42" in capsys.readouterr().out

    assert main(["status", "--config", str(config)]) == 0
    table = capsys.readouterr().out
    assert "usr_maria_42" in table and "active" in table
    assert main(["status", "--config", str(config), "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["humans"]
    assert row["human_id"] == "usr_maria_42" and row["state"] == "active"
    (grant,) = anyio.run(pg_grants, pg_database.socket_url, key_of(config))
    assert grant.access_token.reveal() == ANSWER["access_token"]


def test_status_with_another_key_is_refused_naming_the_database(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    anyio.run(seed_pg, pg_database.socket_url, Key.generate(), grants(2), [])
    before = tables(pg_cluster, pg_database)
    config = pg_config(tmp_path, pg_database.socket_url)
    code, out, err = haasd("status", "--config", str(config))
    assert code == 1 and out == b""
    line = one_line(err)
    assert "another key" in line and describe(pg_database.socket_url) in line
    assert tables(pg_cluster, pg_database) == before


# --- rekey -------------------------------------------------------------------------------


def test_rekey_reseals_everything_in_the_database(
    config: Path, pg_database: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    url, old = pg_database.socket_url, key_of(config)
    seeded, consents = grants(20), [pending(600 + i) for i in range(3)]
    anyio.run(seed_pg, url, old, seeded, consents)
    new_file = config.parent / "new.key"
    new = write_key(new_file)

    assert main(["rekey", "--config", str(config), "--new-key", str(new_file)]) == 0

    out = capsys.readouterr().out
    assert (
        f"re-sealed 20 grants and 3 pending consents of {describe(url)} under key"
        f" {new.key_id} (was {old.key_id})"
    ) in out
    assert f"store.key credential at {new_file}" in out
    assert "every instance must be given the new key" in out
    assert "no rolling rekey" in out and "refuses to\n  start on this store" in out
    assert "haasd-key-v1" not in out
    with pytest.raises(WrongKeyError, match="another key"):
        anyio.run(pg_grants, url, old)
    assert anyio.run(pg_grants, url, new) == seeded

    async def take_all() -> list[str]:
        async with await PgStore.open(url, Sealer(new)) as store:
            taken = [await store.take_pending(record.state_id) for record, _ in consents]
        return [t[1].reveal() for t in taken if t is not None]

    assert anyio.run(take_all) == [verifier.reveal() for _, verifier in consents]


def test_rekey_refuses_while_an_instance_is_connected(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url = pg_database.socket_url
    anyio.run(seed_pg, url, key_of(config), grants(3), [])
    write_key(config.parent / "new.key")
    before = tables(pg_cluster, pg_database)

    async def with_an_instance() -> tuple[int, bytes, bytes]:
        async with await PgStore.open(url, Sealer(key_of(config))):
            args = ("rekey", "--config", str(config), "--new-key", str(config.parent / "new.key"))
            return await anyio.to_thread.run_sync(lambda: haasd(*args))

    code, _, err = anyio.run(with_an_instance)
    assert code == 1
    line = one_line(err)
    assert "1 other haasd session connected to store" in line
    assert "stop every haasd instance on it before `haasd rekey`" in line
    assert tables(pg_cluster, pg_database) == before


def test_a_session_ending_as_the_rekey_starts_is_waited_for_not_refused(
    config: Path, pg_database: PgDatabase
) -> None:
    """An instance killed a moment before leaves a session the server ends a moment later:
    `haasd rekey` run right then waits for it (up to 2 s) instead of refusing."""
    url, old = pg_database.socket_url, key_of(config)
    seeded = grants(3)
    anyio.run(seed_pg, url, old, seeded, [])
    new = write_key(config.parent / "new.key")
    args = ("rekey", "--config", str(config), "--new-key", str(config.parent / "new.key"))
    with psycopg.connect(pg_database.dsn, application_name="haasd") as ending:
        ending.execute("SELECT 1")

        async def end_soon() -> None:
            await anyio.sleep(0.8)  # most often after the rekey looked at the sessions
            ending.close()

        async def rekey_while_it_ends() -> tuple[int, bytes, bytes]:
            async with anyio.create_task_group() as tg:
                tg.start_soon(end_soon)
                done = await anyio.to_thread.run_sync(lambda: haasd(*args))
            return done

        code, _, err = anyio.run(rekey_while_it_ends)
    assert code == 0, err.decode()
    assert anyio.run(pg_grants, url, new) == seeded


def test_rekey_with_a_row_the_key_does_not_open_changes_nothing(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    anyio.run(seed_pg, pg_database.socket_url, key_of(config), grants(3), [])
    # a scope widened by someone without the key: the row no longer opens
    pg_cluster.psql(
        "UPDATE grants SET scope = 'admin' WHERE human_id = 'usr_00001'", pg_database.name
    )
    write_key(config.parent / "new.key")
    before = tables(pg_cluster, pg_database)
    code, _, err = haasd(
        "rekey", "--config", str(config), "--new-key", str(config.parent / "new.key")
    )
    assert code == 1
    line = one_line(err)
    assert "usr_00001" in line and "nothing was re-sealed, the store is unchanged" in line
    assert tables(pg_cluster, pg_database) == before


def test_rekey_with_the_wrong_key_writes_nothing(
    tmp_path: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    anyio.run(seed_pg, pg_database.socket_url, Key.generate(), grants(2), [pending(600)])
    config = pg_config(tmp_path, pg_database.socket_url)  # another key
    write_key(tmp_path / "new.key")
    before = tables(pg_cluster, pg_database)
    code, _, err = haasd("rekey", "--config", str(config), "--new-key", str(tmp_path / "new.key"))
    assert code == 1
    assert "another key" in one_line(err)
    assert tables(pg_cluster, pg_database) == before


def test_rekey_refuses_the_current_key(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    anyio.run(seed_pg, pg_database.socket_url, key_of(config), grants(1), [])
    before = tables(pg_cluster, pg_database)
    same = config.parent / "same.key"
    write_key(same, key_of(config))
    code, _, err = haasd("rekey", "--config", str(config), "--new-key", str(same))
    assert code == 1 and "the new key is the store's current key" in one_line(err)
    assert tables(pg_cluster, pg_database) == before


# A `haasd rekey` that dies (os._exit, as a SIGKILL) once the grants are re-sealed, inside
# the transaction: the server rolls it back.
DYING_REKEY = """
import os, sys
import haasd.pgstore._rekey as rekey
from haasd.cli import main

reseal = rekey._reseal_table

async def dying(conn, old, new, table, id_column, columns):
    done = await reseal(conn, old, new, table, id_column, columns)
    if table == "grants":
        print("resealed", done, flush=True)
        os._exit(137)
    return done

rekey._reseal_table = dying
sys.exit(main(sys.argv[1:]))
"""


def test_a_rekey_killed_midway_leaves_the_old_key_working(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url, old = pg_database.socket_url, key_of(config)
    seeded = grants(30)
    anyio.run(seed_pg, url, old, seeded, [pending(600)])
    before = tables(pg_cluster, pg_database)
    new_file = config.parent / "new.key"
    new = write_key(new_file)
    args = ["rekey", "--config", str(config), "--new-key", str(new_file)]
    code, out, _ = python("-c", DYING_REKEY, *args)
    assert (code, out) == (137, b"resealed 30\n")

    assert tables(pg_cluster, pg_database) == before
    assert anyio.run(pg_grants, url, old) == seeded
    # and a rekey run again completes
    assert haasd(*args)[0] == 0
    assert anyio.run(pg_grants, url, new) == seeded


# --- backup and restore ------------------------------------------------------------------


def test_backup_while_an_instance_runs_and_restore_into_sqlite(
    config: Path, pg_database: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = pg_database.socket_url, key_of(config)
    seeded = grants(12)
    anyio.run(seed_pg, url, key, seeded, [pending(600), pending(700)])
    out = config.parent / "pg-backup.db"

    async def backup_beside_an_instance() -> int:
        async with await PgStore.open(url, Sealer(key)) as instance:
            await instance.put_grant(make_grant("usr_zz_meanwhile"))
            return await anyio.to_thread.run_sync(
                main, ["backup", "--config", str(config), str(out)]
            )

    assert anyio.run(backup_beside_an_instance) == 0
    printed = capsys.readouterr().out
    assert f"backed up 13 grants and 2 pending consents of {describe(url)}" in printed
    assert f"sealed with key {key.key_id}) to {out} (mode 0600)" in printed
    assert out.stat().st_mode & 0o777 == 0o600
    assert main(["backup", "--config", str(config), str(out)]) == 1  # never over a file
    assert "never overwrites" in capsys.readouterr().err

    # the backup is a SQLite store: the SQLite restore takes it as its own backups
    sqlite = sqlite_config(config.parent / "lite", key)
    assert main(["restore", "--config", str(sqlite), str(out)]) == 0
    restored = anyio.run(sqlite_grants, load_config(sqlite, {}).store.path, key)
    assert [g.human_id for g in restored] == [g.human_id for g in seeded] + ["usr_zz_meanwhile"]
    assert restored[:12] == seeded


def test_restore_replaces_the_database_by_a_sqlite_backup(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase, capsys: pytest.CaptureFixture[str]
) -> None:
    url, key = pg_database.socket_url, key_of(config)
    anyio.run(seed_pg, url, key, [make_grant("usr_to_be_replaced")], [pending(900)])
    sqlite = sqlite_config(config.parent / "lite", key)
    backed = grants(8)
    consents = [pending(600)]
    anyio.run(seed_sqlite, load_config(sqlite, {}).store.path, key, backed, consents)
    backup = config.parent / "lite-backup.db"
    assert main(["backup", "--config", str(sqlite), str(backup)]) == 0
    capsys.readouterr()

    assert main(["restore", "--config", str(config), str(backup)]) == 0
    printed = capsys.readouterr().out
    assert "restored 8 grants and 1 pending consent (" in printed
    assert f"from {backup} into {describe(url)}" in printed
    assert anyio.run(pg_grants, url, key) == backed

    async def verifier() -> str | None:
        async with await PgStore.open(url, Sealer(key)) as store:
            assert [r.state_id for r in await store.list_pending()] == [consents[0][0].state_id]
            taken = await store.take_pending(consents[0][0].state_id)
        return None if taken is None else taken[1].reveal()

    assert anyio.run(verifier) == consents[0][1].reveal()


def test_restore_refuses_while_an_instance_is_connected_unless_forced(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url, key = pg_database.socket_url, key_of(config)
    anyio.run(seed_pg, url, key, grants(2), [])
    sqlite = sqlite_config(config.parent / "lite", key)
    anyio.run(seed_sqlite, load_config(sqlite, {}).store.path, key, grants(5), [])
    backup = config.parent / "b.db"
    assert haasd("backup", "--config", str(sqlite), str(backup))[0] == 0
    before = tables(pg_cluster, pg_database)

    async def restore(*extra: str) -> tuple[int, bytes, bytes]:
        async with await PgStore.open(url, Sealer(key)):
            args = ("restore", "--config", str(config), str(backup), *extra)
            return await anyio.to_thread.run_sync(lambda: haasd(*args))

    code, _, err = anyio.run(restore)
    assert code == 1
    line = one_line(err)
    assert "other haasd session connected" in line and "pass --force" in line
    assert tables(pg_cluster, pg_database) == before
    code, out, _ = anyio.run(restore, "--force")
    assert code == 0 and b"restored 5 grants" in out
    assert len(anyio.run(pg_grants, url, key)) == 5


def test_restore_of_a_backup_the_key_does_not_open_changes_nothing(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url, key = pg_database.socket_url, key_of(config)
    anyio.run(seed_pg, url, key, grants(2), [])
    other = sqlite_config(config.parent / "other")  # another key
    anyio.run(seed_sqlite, load_config(other, {}).store.path, key_of(other), grants(4), [])
    backup = config.parent / "other.db"
    assert haasd("backup", "--config", str(other), str(backup))[0] == 0
    before = tables(pg_cluster, pg_database)
    backup_bytes = backup.read_bytes()

    code, _, err = haasd("restore", "--config", str(config), str(backup))
    assert code == 1
    line = one_line(err)
    assert "the key does not match this store" in line and "nothing was restored" in line
    assert str(backup) in line
    assert tables(pg_cluster, pg_database) == before
    assert backup.read_bytes() == backup_bytes
    code, _, err = haasd("restore", "--config", str(config), str(config.parent / "none.db"))
    assert code == 1 and "no backup at" in one_line(err)


# --- the password ------------------------------------------------------------------------


def test_the_password_reaches_no_output(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    url, key = pg_database.socket_url, key_of(config)
    anyio.run(seed_pg, url, key, grants(3), [pending(600)])
    write_key(config.parent / "new.key")
    runs = [
        haasd("check-config", "--config", str(config)),
        haasd("status", "--config", str(config)),
        haasd("backup", "--config", str(config), str(config.parent / "b.db")),
        haasd("rekey", "--config", str(config), "--new-key", str(config.parent / "new.key")),
        haasd("restore", "--config", str(config), str(config.parent / "b.db")),  # old key now
    ]
    assert [code for code, _, _ in runs] == [0, 0, 0, 0, 1]
    # the same database unreachable: named, without the password
    down = pg_config(
        config.parent / "down", f"postgresql://postgres@127.0.0.1:1/{pg_database.name}", key
    )
    runs.append(haasd("status", "--config", str(down)))
    runs.append(haasd("restore", "--config", str(down), str(config.parent / "b.db")))
    assert all(code != 0 for code, _, _ in runs[5:])
    for _, _, err in runs[5:]:
        assert f"store postgresql://postgres@127.0.0.1:1/{pg_database.name}" in one_line(err)
    for _, out, err in runs:
        assert PASSWORD.encode() not in out + err
        assert b"Traceback" not in err


def test_a_database_without_a_store_is_named_and_left_empty(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    write_key(config.parent / "new.key")
    for args in (
        ["status"],
        ["backup", str(config.parent / "b.db")],
        ["rekey", "--new-key", str(config.parent / "new.key")],
    ):
        code, out, err = haasd(args[0], "--config", str(config), *args[1:])
        assert (code, out) == (1, b""), args
        line = one_line(err)
        assert f"no store in {describe(pg_database.socket_url)}; `haasd import`" in line
    assert tables(pg_cluster, pg_database) == "tables: []"
    assert not (config.parent / "b.db").exists()


def test_an_instance_in_a_transaction_is_named_at_once_not_waited_for(
    config: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    anyio.run(seed_pg, pg_database.socket_url, key_of(config), grants(2), [])
    write_key(config.parent / "new.key")
    before = tables(pg_cluster, pg_database)
    with psycopg.connect(pg_database.dsn, application_name="haasd") as instance:
        instance.execute("SELECT * FROM grants FOR UPDATE")  # a write under way, locks held
        started = time.monotonic()
        code, _, err = haasd(
            "rekey", "--config", str(config), "--new-key", str(config.parent / "new.key")
        )
        waited = time.monotonic() - started
    assert code == 1 and "1 other haasd session connected" in one_line(err)
    assert waited < 8  # the statement timeout (10 s) was not what ended it
    assert tables(pg_cluster, pg_database) == before
