"""Time `haasd move-store`, `backup`, `restore` and `rekey` on a PostgreSQL store of N grants.

    .venv/bin/python bench/pg_maintenance.py --url postgresql://postgres@127.0.0.1/postgres \
        [--grants 10000]

URL names a PostgreSQL server on which this user may create databases: a database of its
own is created there for the run and dropped afterwards. Builds a real encrypted SQLite
store of N grants in a temporary directory, then runs the commands as a user does (the
CLI entry, in this process): move it into the database, back the database up, restore
that backup, rekey the database, and move it back into a new SQLite file. Prints the wall
time of each.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import secrets
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import anyio
import psycopg
from maintenance import build

from haasd.cli import main as haasd
from haasd.crypto import Key, Sealer


def run(what: str, *args: str) -> None:
    out = io.StringIO()
    started = time.perf_counter()
    with contextlib.redirect_stdout(out):
        code = haasd(list(args))
    seconds = time.perf_counter() - started
    if code != 0:
        sys.exit(f"haasd {args[0]} failed ({code}): {out.getvalue()}")
    print(f"{what:<58}{seconds:6.2f} s")


def write_key(path: Path, key: Key) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key.to_text())


def bench(url: str, count: int, tmp: Path) -> None:
    old, new = Key.generate(), Key.generate()
    write_key(tmp / "store.key", old)
    write_key(tmp / "new.key", new)
    haas = (
        '[haas]\nenvironment = "test"\nclient_id = "app_1"\nclient_secret = "x"\n'
        'redirect_uri = "http://127.0.0.1:8765/callback"\n'
    )
    lite = tmp / "lite.toml"
    lite.write_text(f'{haas}[store]\npath = "haasd.db"\nkey_file = "store.key"\n')
    pg = tmp / "pg.toml"
    pg.write_text(f'{haas}[store]\nurl = "{url}"\nkey_file = "store.key"\n')
    anyio.run(build, tmp / "haasd.db", Sealer(old), count)
    print(f"store: {count:,} grants, {(tmp / 'haasd.db').stat().st_size / 1e6:.1f} MB")
    run("move-store SQLite -> PostgreSQL (copy, read back, verify)", "move-store",
        "--config", str(lite), "--to", url)  # fmt: skip
    run("backup (snapshot into a SQLite file)", "backup", "--config", str(pg), str(tmp / "b.db"))
    run("restore (check every token, replace in one transaction)", "restore",
        "--config", str(pg), str(tmp / "b.db"))  # fmt: skip
    run("rekey (re-seal in one transaction, read back)", "rekey",
        "--config", str(pg), "--new-key", str(tmp / "new.key"))  # fmt: skip
    (tmp / "store.key").unlink()
    write_key(tmp / "store.key", new)
    run("move-store PostgreSQL -> SQLite (copy, read back, verify)", "move-store",
        "--config", str(pg), "--to", str(tmp / "back.db"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True, help="a server where a database may be created")
    parser.add_argument("--grants", type=int, default=10_000)
    args = parser.parse_args()
    print("haasd maintenance on PostgreSQL")
    print(f"reproduce: .venv/bin/python bench/pg_maintenance.py --url URL --grants {args.grants}")
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    name = f"haasd_bench_{secrets.token_hex(4)}"
    with psycopg.connect(args.url, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
        version = admin.info.server_version
        print(f"server: PostgreSQL {version // 10000}.{version % 100}")
    try:
        parts = urlsplit(args.url)
        url = urlunsplit(parts._replace(path=f"/{name}"))
        with tempfile.TemporaryDirectory(prefix="haasd-bench-") as tmp:
            bench(url, args.grants, Path(tmp))
    finally:
        with psycopg.connect(args.url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
