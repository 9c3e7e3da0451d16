"""What the tests of the maintenance commands on PostgreSQL share (tests/test_pg_maintenance.py,
tests/test_store_move.py): configs for either backend with one key, stores seeded through
the stores themselves, every row of a database as text, and ``python -m haasd`` as a
user runs it, its output as bytes."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from pathlib import Path

from factories import T0, make_grant
from pg_cluster import PgCluster, PgDatabase

from haasd.crypto import Key, Sealer
from haasd.grants import Grant
from haasd.pgstore import PgStore
from haasd.secret import Secret
from haasd.store import PendingRecord, Store

#: the database password the configs give; it must never reach an output
PASSWORD = "pw-7c1e-never-printed"

HAAS = (
    '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "test-secret"\n'
    'redirect_uri = "http://127.0.0.1:8765/callback"\n'
)


def write_key(path: Path, key: Key | None = None) -> Key:
    """``key`` (or a new one) in a new file at ``path``, mode 0600."""
    key = key or Key.generate()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(key.to_text() + "\n")
    return key


def write_secret(path: Path, text: str) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    return path


def pg_config(directory: Path, url: str, key: Key | None = None) -> Path:
    """A config in ``directory`` for the PostgreSQL store at ``url``, its password from a
    0600 file, its key in ``store.key`` (``key``, or a new one)."""
    directory.mkdir(exist_ok=True)
    if not (directory / "store.key").exists():
        write_key(directory / "store.key", key)
    if not (directory / "store.password").exists():
        write_secret(directory / "store.password", PASSWORD)
    path = directory / "pg.toml"
    path.write_text(
        f'{HAAS}[store]\nurl = "{url}"\nkey_file = "store.key"\npassword_file = "store.password"\n'
    )
    return path


def sqlite_config(directory: Path, key: Key | None = None, name: str = "haasd.db") -> Path:
    """A config in ``directory`` for the SQLite store ``state/NAME``."""
    directory.mkdir(exist_ok=True)
    if not (directory / "store.key").exists():
        write_key(directory / "store.key", key)
    (directory / "state").mkdir(exist_ok=True)
    path = directory / "sqlite.toml"
    path.write_text(f'{HAAS}[store]\npath = "state/{name}"\nkey_file = "store.key"\n')
    return path


def key_of(config: Path) -> Key:
    return Key.from_text((config.parent / "store.key").read_text())


def pending(n: int) -> tuple[PendingRecord, Secret]:
    record = PendingRecord(secrets.token_hex(32), ("status:read",), None, "http://x/cb", T0, T0 + n)
    return record, Secret("verifier-" + secrets.token_hex(20))


def grants(n: int) -> list[Grant]:
    return [make_grant(f"usr_{i:05d}") for i in range(n)]


async def seed_pg(
    url: str, key: Key, grants: list[Grant], consents: list[tuple[PendingRecord, Secret]]
) -> None:
    async with await PgStore.open(url, Sealer(key)) as store:
        await store.put_grants(grants)
        for record, verifier in consents:
            assert await store.add_pending(record, verifier, limit=100)


async def seed_sqlite(
    path: Path, key: Key, grants: list[Grant], consents: list[tuple[PendingRecord, Secret]]
) -> None:
    async with await Store.open(path, Sealer(key)) as store:
        await store.put_grants(grants)
        for record, verifier in consents:
            assert await store.add_pending(record, verifier, limit=100)


async def pg_grants(url: str, key: Key) -> list[Grant]:
    async with await PgStore.open(url, Sealer(key)) as store:
        return await store.list_grants(warn=False)


async def sqlite_grants(path: Path, key: Key) -> list[Grant]:
    async with await Store.open(path, Sealer(key)) as store:
        return await store.list_grants(warn=False)


def tables(cluster: PgCluster, database: PgDatabase) -> str:
    """Every table of ``database`` and every row of each, as text: what a refusal must
    leave exactly as it was."""
    names = cluster.psql(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1", database.name
    ).split()
    rows = [
        cluster.psql(f'SELECT * FROM "{name}" ORDER BY 1', database.name)  # noqa: S608 - names from pg_tables
        for name in names
    ]
    return "\n".join([f"tables: {names}", *rows])


def files_of(directory: Path) -> dict[str, bytes]:
    """Every file under ``directory`` and its bytes."""
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def haasd(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """``python -m haasd ARGS`` as a user runs it: exit code, stdout and stderr bytes."""
    return python("-m", "haasd", *args, env=env)


def python(*args: str, env: dict[str, str] | None = None) -> tuple[int, bytes, bytes]:
    """``python ARGS`` without the caller's HAASD_* variables: exit code, stdout, stderr."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("HAASD_")}
    done = subprocess.run(
        [sys.executable, *args],
        capture_output=True,
        env=base | (env or {}),
        timeout=90,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def one_line(err: bytes | str) -> str:
    """``err`` as one ``haasd:`` error line, never a traceback."""
    text = err.decode() if isinstance(err, bytes) else err
    assert "Traceback" not in text, text
    assert text.count("\n") == 1 and text.startswith("haasd: "), text
    return text
