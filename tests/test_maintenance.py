"""``haasd rekey``, ``haasd backup`` and ``haasd restore``: nothing half-done, nothing in
the clear, nothing replaced that the key does not open."""

from __future__ import annotations

import os
import secrets
import sqlite3
import stat
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import aiosqlite
import anyio
import pytest
from factories import T0, make_grant
from previous_schema import write_previous_store

import haasd.maintenance
from haasd.cli import main
from haasd.config import Config, load_config
from haasd.crypto import Key, Sealer
from haasd.errors import (
    ConfigError,
    DecryptError,
    HaasdError,
    StoreCorruptError,
    StoreLockedError,
    WrongKeyError,
)
from haasd.grants import Grant, State
from haasd.maintenance import (
    backup_store,
    load_key_file,
    rekey_store,
    restore_store,
)
from haasd.secret import Secret
from haasd.store import PendingRecord, Store, instance_lock
from haasd.store.schema import MIGRATIONS, SEALED

# A child that runs `haasd rekey` and dies (os._exit: no cleanup, as a SIGKILL) at POINT:
# "transaction" once the grants are re-sealed, uncommitted (a tiny page cache first, so
# that they spill into the copy's -wal), or "rename" just before the copy replaces the store.
CHILD = """
import os, sys
import haasd.maintenance as m
import haasd.storefiles as files
from haasd.cli import main
from haasd.config import load_config
from pathlib import Path

point, args = sys.argv[1], sys.argv[2:]
reseal_table, install = m._reseal_table, files.install

async def dying_reseal(conn, old, new, table, id_column, columns):
    await conn.execute("PRAGMA cache_size = 2")
    done = await reseal_table(conn, old, new, table, id_column, columns)
    if point == "transaction" and table == "grants":
        copy = files.beside(load_config(Path(args[2])).store.path, "rekey")
        print("wal", os.stat(str(copy) + "-wal").st_size, flush=True)
        os._exit(137)
    return done

def dying_install(copy, path, replace_stale):
    if point == "rename":
        os._exit(137)
    install(copy, path, replace_stale)

m._reseal_table, files.install = dying_reseal, dying_install
sys.exit(main(args))
"""


def write_key(path: Path, key: Key | None = None, mode: int = 0o600) -> Key:
    key = key or Key.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.to_text() + "\n")
    os.chmod(path, mode)
    return key


def write_config(directory: Path) -> Path:
    """A config in ``directory`` with a fresh store.key and its store under state/."""
    directory.mkdir(exist_ok=True)
    write_key(directory / "store.key")
    (directory / "state").mkdir()
    path = directory / "haasd.toml"
    path.write_text(
        '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "test-secret"\n'
        'redirect_uri = "http://127.0.0.1:8765/callback"\n'
        '[store]\npath = "state/haasd.db"\nkey_file = "store.key"\n'
    )
    return path


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    return write_config(tmp_path)


def config_of(path: Path) -> Config:
    return load_config(path, environ={})


def sealer_of(config_path: Path) -> Sealer:
    return Sealer(Key.from_text((config_path.parent / "store.key").read_text()))


def pending(n: int) -> tuple[PendingRecord, Secret]:
    record = PendingRecord(secrets.token_hex(32), ("status:read",), None, "http://x/cb", T0, T0 + n)
    return record, Secret("verifier-" + secrets.token_hex(20))


async def seed(
    path: Path, sealer: Sealer, n: int, n_pending: int = 0
) -> tuple[list[Grant], list[tuple[PendingRecord, Secret]]]:
    grants = [make_grant(f"usr_{i:05d}") for i in range(n)]
    consents = [pending(600 + i) for i in range(n_pending)]
    async with await Store.open(path, sealer) as store:
        await store.put_grants(grants)
        for record, verifier in consents:
            assert await store.add_pending(record, verifier, limit=100)
    return grants, consents


async def contents(path: Path, sealer: Sealer) -> list[Grant]:
    async with await Store.open(path, sealer) as store:
        return await store.list_grants()


def store_files(store: Path) -> dict[str, bytes]:
    """The store, its -wal and -shm (whichever exist), with their bytes."""
    names = (store.name, f"{store.name}-wal", f"{store.name}-shm")
    return {n: (store.parent / n).read_bytes() for n in names if (store.parent / n).exists()}


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.endswith((".tmp", "-wal")))


def one_line_error(err: str) -> str:
    assert "Traceback" not in err
    assert err.count("\n") == 1, err
    return err


# --- rekey -------------------------------------------------------------------------------


async def test_rekey_reseals_everything_and_only_the_new_key_opens(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    old, new = Sealer(Key.generate()), Sealer(Key.generate())
    grants, consents = await seed(db, old, 50, n_pending=3)

    done = await rekey_store(db, old, new)

    assert (done.grants, done.pending, done.key_id) == (50, 3, new.current_key_id)
    with pytest.raises(WrongKeyError):
        await Store.open(db, old)
    async with await Store.open(db, new) as store:
        assert await store.list_grants() == grants
        for record, verifier in consents:
            assert await store.take_pending(record.state_id) == (record, verifier)
    data = db.read_bytes()
    assert bytes.fromhex(old.current_key_id) not in data  # no old blob, not even freed
    assert bytes.fromhex(new.current_key_id) in data
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert leftovers(tmp_path) == []


async def test_a_failure_midway_rolls_back_and_leaves_the_store_unchanged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    db = tmp_path / "grants.db"
    old, new = Sealer(Key.generate()), Sealer(Key.generate())
    grants, _ = await seed(db, old, 20, n_pending=1)
    before = store_files(db)
    reseal = haasd.maintenance._reseal_table

    async def failing(
        conn: aiosqlite.Connection, o: Sealer, n: Sealer, table: str, i: str, c: tuple[str, ...]
    ) -> int:
        done = await reseal(conn, o, n, table, i, c)
        if table == "pending_consents":  # the grants are re-sealed already
            raise OSError("disk on fire")
        return done

    monkeypatch.setattr(haasd.maintenance, "_reseal_table", failing)
    with pytest.raises(OSError, match="disk on fire"):
        await rekey_store(db, old, new)
    assert store_files(db) == before
    assert await contents(db, old) == grants
    assert leftovers(tmp_path) == []


async def test_a_value_the_key_does_not_open_stops_the_rekey(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    old = Sealer(Key.generate())
    await seed(db, old, 3)
    with closing(sqlite3.connect(db)) as conn, conn:  # a blob moved to another row
        blob = conn.execute("SELECT access_token FROM grants WHERE human_id = 'usr_00000'")
        sql = "UPDATE grants SET access_token = ? WHERE human_id = 'usr_00001'"
        conn.execute(sql, blob.fetchone())
    before = store_files(db)
    with pytest.raises(DecryptError, match=r"usr_00001.*the store is unchanged"):
        await rekey_store(db, old, Sealer(Key.generate()))
    assert store_files(db) == before
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("point", ["transaction", "rename"])
def test_a_crash_during_rekey_leaves_the_old_key_working(config_file: Path, point: str) -> None:
    config = config_of(config_file)
    db, old = config.store.path, sealer_of(config_file)
    grants, _ = anyio.run(seed, db, old, 2000)
    new_key = write_key(config_file.parent / "new.key")
    before = store_files(db)
    child = config_file.parent / "child.py"
    child.write_text(CHILD)
    args = ["rekey", "--config", str(config_file), "--new-key", str(config_file.parent / "new.key")]

    result = subprocess.run(
        [sys.executable, str(child), point, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 137, result.stderr
    if point == "transaction":  # uncommitted pages were on disk when it died
        assert int(result.stdout.split()[1]) > 0
    assert store_files(db) == before
    assert anyio.run(contents, db, old) == grants
    with pytest.raises(WrongKeyError):
        anyio.run(contents, db, Sealer(new_key))
    # the next rekey clears what the crashed one left behind
    assert main(args) == 0
    assert anyio.run(contents, db, Sealer(new_key)) == grants
    assert leftovers(db.parent) == []


def test_rekey_command_says_the_old_key_is_no_longer_needed(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config_of(config_file).store.path
    grants, _ = anyio.run(seed, db, sealer_of(config_file), 3)
    new_file = config_file.parent / "new.key"
    new_key = write_key(new_file)

    assert main(["rekey", "--config", str(config_file), "--new-key", str(new_file)]) == 0

    out = capsys.readouterr().out
    assert f"re-sealed 3 grants and 0 pending consents of {db} under key {new_key.key_id}" in out
    assert (
        "the old key is no longer needed; point store.key_file / HAASD_STORE_KEY / the"
        f" store.key credential at {new_file}"
    ) in out
    assert "haasd-key-v1" not in out
    assert anyio.run(contents, db, Sealer(new_key)) == grants
    # the config still names the old key: the command edits no config
    assert main(["status", "--config", str(config_file)]) == 1
    assert "the key does not match this store" in capsys.readouterr().err


def test_rekey_refuses_the_current_key(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config_of(config_file).store.path
    anyio.run(seed, db, sealer_of(config_file), 1)
    before = store_files(db)
    same = config_file.parent / "same.key"
    write_key(same, load_key_file(config_file.parent / "store.key"))

    assert main(["rekey", "--config", str(config_file), "--new-key", str(same)]) == 1

    err = one_line_error(capsys.readouterr().err)
    assert "the new key is the store's current key" in err
    assert store_files(db) == before


@pytest.mark.parametrize(
    ("mode", "text", "message"),
    [
        (0o644, None, "readable by group or others (mode 0644); run: chmod 600"),
        (0o600, "haasd-key-v1:tooshort", "not a haasd key"),
    ],
)
def test_rekey_refuses_a_bad_key_file_with_exit_2(
    config_file: Path,
    capsys: pytest.CaptureFixture[str],
    mode: int,
    text: str | None,
    message: str,
) -> None:
    db = config_of(config_file).store.path
    anyio.run(seed, db, sealer_of(config_file), 1)
    before = store_files(db)
    bad = config_file.parent / "bad.key"
    write_key(bad, mode=mode)
    if text is not None:
        bad.write_text(text)

    assert main(["rekey", "--config", str(config_file), "--new-key", str(bad)]) == 2

    err = one_line_error(capsys.readouterr().err)
    assert "--new-key" in err and message in err
    assert store_files(db) == before
    with pytest.raises(ConfigError):
        load_key_file(bad)


async def test_rekey_and_restore_refuse_while_the_daemon_runs(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    old = Sealer(Key.generate())
    await seed(db, old, 5)
    backup = tmp_path / "backup.db"
    await anyio.to_thread.run_sync(backup_store, db, backup)
    before = store_files(db)
    async with instance_lock(db):  # as `haasd run` holds it
        with pytest.raises(StoreLockedError, match="haasd is running on the store"):
            await rekey_store(db, old, Sealer(Key.generate()))
        with pytest.raises(StoreLockedError, match="stop it before `haasd restore`"):
            await restore_store(db, backup, old)
        # backup needs no lock: it works beside the daemon
        await anyio.to_thread.run_sync(backup_store, db, tmp_path / "second.db")
    assert store_files(db) == before


def test_commands_refuse_while_locked_in_one_line(config_file: Path) -> None:
    db = config_of(config_file).store.path
    anyio.run(seed, db, sealer_of(config_file), 1)
    new_key, backup = config_file.parent / "new.key", config_file.parent / "backup.db"
    write_key(new_key)
    backup_store(db, backup)
    before = store_files(db)

    async def while_locked(*args: str) -> subprocess.CompletedProcess[bytes]:
        async with instance_lock(db):
            command = [sys.executable, "-m", "haasd", *args, "--config", str(config_file)]
            return await anyio.run_process(command, check=False)

    for args in (("rekey", "--new-key", str(new_key)), ("restore", str(backup))):
        result = anyio.run(while_locked, *args)
        err = result.stderr.decode()
        assert result.returncode == 1, err
        assert "haasd is running on the store" in one_line_error(err)
    assert store_files(db) == before


# --- backup ------------------------------------------------------------------------------


async def test_backup_while_a_writer_is_active_is_consistent_and_sealed(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    sealer = Sealer(Key.generate())
    await seed(db, sealer, 3000)
    written: dict[str, Grant] = {}
    backups: list[tuple[int, int, Path]] = []
    stop = anyio.Event()

    async with await Store.open(db, sealer) as store, anyio.create_task_group() as tg:

        async def writer() -> None:
            i = 0
            while not stop.is_set():  # (store calls are shielded: they never see a cancel)
                pair = [make_grant(f"usr_pair_{i}_a"), make_grant(f"usr_pair_{i}_b")]
                await store.put_grants(pair)  # the pair in one transaction
                written.update((g.human_id, g) for g in pair)
                i += 1

        tg.start_soon(writer)
        for n in range(3):
            await anyio.sleep(0.05)
            target = tmp_path / f"backup-{n}.db"
            low = len(written)
            await anyio.to_thread.run_sync(backup_store, db, target)
            backups.append((low, len(written), target))
        stop.set()

    assert any(high > low for low, high, _ in backups)  # written to while copying
    for low, high, target in backups:
        assert stat.S_IMODE(target.stat().st_mode) == 0o600
        grants = await contents(target, sealer)
        pairs = [g for g in grants if g.human_id.startswith("usr_pair_")]
        assert low <= len(pairs) <= high + 2
        assert len(pairs) % 2 == 0  # never half a transaction
        for g in pairs:
            assert g == written[g.human_id]
        data = target.read_bytes()
        assert b"usr_pair_" in data  # human ids are plain: the scan does see the rows
        assert b"haas_at_" not in data and b"haas_rt_" not in data  # every token's prefix
    assert leftovers(tmp_path) == []


def test_backup_command_reports_and_never_overwrites(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = config_of(config_file).store.path
    anyio.run(seed, db, sealer_of(config_file), 7, 2)
    out = config_file.parent / "backup.db"

    assert main(["backup", "--config", str(config_file), str(out)]) == 0
    printed = capsys.readouterr().out
    assert "backed up 7 grants and 2 pending consents" in printed
    assert f"sealed with key {sealer_of(config_file).current_key_id}) to {out}" in printed
    first = out.read_bytes()

    assert main(["backup", "--config", str(config_file), str(out)]) == 1
    assert "never overwrites" in one_line_error(capsys.readouterr().err)
    assert out.read_bytes() == first
    assert leftovers(config_file.parent) == []


def test_backup_of_no_store_or_not_a_store_fails_in_one_line(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = config_file.parent / "backup.db"
    assert main(["backup", "--config", str(config_file), str(out)]) == 1
    assert "no store at" in one_line_error(capsys.readouterr().err)
    config_of(config_file).store.path.write_bytes(b"not a database at all" * 500)
    assert main(["backup", "--config", str(config_file), str(out)]) == 1
    assert "not a usable haasd store" in one_line_error(capsys.readouterr().err)
    assert not out.exists()
    assert leftovers(config_file.parent) == []


# --- restore -----------------------------------------------------------------------------


def test_restore_round_trip(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = config_of(config_file)
    db, sealer = config.store.path, sealer_of(config_file)
    grants, _ = anyio.run(seed, db, sealer, 30, 1)
    backup = config_file.parent / "backup.db"
    assert main(["backup", "--config", str(config_file), str(backup)]) == 0
    anyio.run(seed, db, sealer, 40)  # replaces the first 30, adds 10
    capsys.readouterr()

    assert main(["restore", "--config", str(config_file), str(backup)]) == 0

    assert "restored 30 grants and 1 pending consent" in capsys.readouterr().out
    assert anyio.run(contents, db, sealer) == grants
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert leftovers(db.parent) == []


async def test_restore_replaces_a_crashed_store_and_its_stale_wal(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    sealer = Sealer(Key.generate())
    grants, _ = await seed(db, sealer, 10)
    backup = tmp_path / "backup.db"
    await anyio.to_thread.run_sync(backup_store, db, backup)
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    async with await Store.open(db, sealer) as store:  # a store that died mid-life
        await store.put_grants([make_grant(f"usr_other_{i}") for i in range(50)])
        for name in (db.name, f"{db.name}-wal", f"{db.name}-shm"):
            (crashed / name).write_bytes((tmp_path / name).read_bytes())
    for name in (db.name, f"{db.name}-wal", f"{db.name}-shm"):
        (tmp_path / name).write_bytes((crashed / name).read_bytes())
    assert (tmp_path / f"{db.name}-wal").stat().st_size > 0

    await restore_store(db, backup, sealer)

    assert not (tmp_path / f"{db.name}-wal").exists()
    assert await contents(db, sealer) == grants


def _junk(backup: Path) -> None:
    backup.write_bytes(b"junk" * 4096)


def _damage_a_page(backup: Path) -> None:
    with backup.open("r+b") as f:
        f.seek(3 * 4096)
        f.write(secrets.token_bytes(4096))


@pytest.mark.parametrize("spoil", [_junk, _damage_a_page], ids=["junk", "damaged-page"])
def test_restore_of_a_corrupt_backup_leaves_the_store_byte_identical(
    config_file: Path, capsys: pytest.CaptureFixture[str], spoil: Callable[[Path], None]
) -> None:
    db = config_of(config_file).store.path
    anyio.run(seed, db, sealer_of(config_file), 300)
    backup = config_file.parent / "backup.db"
    assert main(["backup", "--config", str(config_file), str(backup)]) == 0
    spoil(backup)
    before = store_files(db)
    capsys.readouterr()

    assert main(["restore", "--config", str(config_file), str(backup)]) == 1

    err = one_line_error(capsys.readouterr().err)
    assert str(backup) in err and "nothing was restored" in err
    assert ".tmp" not in err
    assert store_files(db) == before
    assert leftovers(db.parent) == []
    with pytest.raises(StoreCorruptError):
        anyio.run(restore_store, db, backup, sealer_of(config_file))


def test_restore_with_the_wrong_key_leaves_the_store_byte_identical(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = write_config(tmp_path / "ours")
    theirs = write_config(tmp_path / "theirs")
    db = config_of(ours).store.path
    anyio.run(seed, db, sealer_of(ours), 5)
    anyio.run(seed, config_of(theirs).store.path, sealer_of(theirs), 5)
    backup = tmp_path / "theirs.db"
    assert main(["backup", "--config", str(theirs), str(backup)]) == 0
    before = store_files(db)
    capsys.readouterr()

    assert main(["restore", "--config", str(ours), str(backup)]) == 1

    err = one_line_error(capsys.readouterr().err)
    assert "the key does not match" in err and str(backup) in err
    assert store_files(db) == before
    with pytest.raises(WrongKeyError):
        anyio.run(restore_store, db, backup, sealer_of(ours))
    assert leftovers(db.parent) == []


async def test_restore_refuses_the_store_itself_and_a_missing_backup(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    sealer = Sealer(Key.generate())
    await seed(db, sealer, 1)
    with pytest.raises(HaasdError, match="is the store itself"):
        await restore_store(db, db, sealer)
    with pytest.raises(HaasdError, match="no backup at"):
        await restore_store(db, tmp_path / "absent.db", sealer)


# --- rows bound to their values, rows that do not open ------------------------------------


async def test_rekey_keeps_each_row_bound_to_its_scope_state_and_expiries(tmp_path: Path) -> None:
    db = tmp_path / "grants.db"
    old, new = Sealer(Key.generate()), Sealer(Key.generate())
    grants = [
        make_grant("usr_a", scope=("status:read",)),
        make_grant("usr_b", state=State.RECONSENT_DUE, access_expires_at=T0 + 0.125),
        make_grant("usr_c", state=State.NEEDS_RECONSENT, access_expires_at=0.0, scope=()),
    ]
    async with await Store.open(db, old) as store:
        await store.put_grants(grants)
    await rekey_store(db, old, new)
    assert await contents(db, new) == grants
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE grants SET state = 'active' WHERE human_id = 'usr_c'")
    async with await Store.open(db, new) as store:
        await store.list_grants()
        assert store.unreadable == {"usr_c"}


@pytest.mark.parametrize(
    "edit",
    [
        "scope = 'tasks:dispatch status:read billing:write'",  # bound: does not open
        "refresh_expires_at = 'never'",  # not even a number
        "refresh_token = 'in the clear'",
    ],
)
def test_rekey_refuses_a_row_that_does_not_open_in_one_line(
    config_file: Path, capsys: pytest.CaptureFixture[str], edit: str
) -> None:
    config = config_of(config_file)
    db = config.store.path
    anyio.run(seed, db, sealer_of(config_file), 3)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(f"UPDATE grants SET {edit} WHERE human_id = 'usr_00001'")  # noqa: S608
    before = store_files(db)
    new_key = config_file.parent / "new.key"
    write_key(new_key)
    capsys.readouterr()

    assert main(["rekey", "--config", str(config_file), "--new-key", str(new_key)]) == 1

    err = one_line_error(capsys.readouterr().err)
    assert "usr_00001" in err and "nothing was re-sealed, the store is unchanged" in err
    assert "re-consent or delete that human first" in err
    assert store_files(db) == before
    assert leftovers(db.parent) == []


def test_restore_names_the_rows_of_a_backup_that_do_not_open(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_of(config_file)
    db, sealer = config.store.path, sealer_of(config_file)
    grants, _ = anyio.run(seed, db, sealer, 3)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE grants SET access_expires_at = 4e9 WHERE human_id = 'usr_00002'")
    backup = config_file.parent / "backup.db"
    assert main(["backup", "--config", str(config_file), str(backup)]) == 0
    anyio.run(seed, db, sealer, 5)
    capsys.readouterr()

    assert main(["restore", "--config", str(config_file), str(backup)]) == 0

    out = capsys.readouterr().out
    assert "restored 3 grants" in out
    assert (
        "1 grant unreadable (store row unreadable, quarantined until re-consent): usr_00002" in out
    )
    restored = anyio.run(contents, db, sealer)
    assert restored[:2] == grants[:2]
    assert restored[2].state is State.NEEDS_RECONSENT


def test_rekey_backup_and_restore_of_a_store_of_the_previous_schema(
    config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = config_of(config_file)
    db = config.store.path
    key = Key.from_text((config_file.parent / "store.key").read_text())
    grants = [make_grant(f"usr_{i}", state=State.RECONSENT_DUE) for i in range(4)]
    write_previous_store(db, key, grants)
    backup = config_file.parent / "backup.db"
    new_key = config_file.parent / "new.key"
    new = Sealer(write_key(new_key))

    assert main(["backup", "--config", str(config_file), str(backup)]) == 0
    assert main(["rekey", "--config", str(config_file), "--new-key", str(new_key)]) == 0
    assert "re-sealed 4 grants" in capsys.readouterr().out
    assert anyio.run(contents, db, new) == grants

    # the backup, still of the previous schema and key, restores under that key
    anyio.run(restore_store, db, backup, Sealer(key))
    assert anyio.run(contents, db, Sealer(key)) == grants
    with closing(sqlite3.connect(db)) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)


# --- what rekey must cover ---------------------------------------------------------------


async def test_every_sealed_column_is_resealed(tmp_path: Path) -> None:
    """Each BLOB column of the schema (meta's key check apart) is in haasd.store.schema.SEALED."""
    db = tmp_path / "grants.db"
    await seed(db, Sealer(Key.generate()), 0)
    with closing(sqlite3.connect(db)) as conn:
        tables = [
            row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        ]
        blobs = {
            (table, row[1])
            for table in tables
            for row in conn.execute(f"PRAGMA table_info({table})")
            if row[2] == "BLOB"
        }
    covered = {(table, column) for table, _, columns in SEALED for column in columns}
    assert blobs == covered | {("meta", "value")}
