"""asyncpg beside psycopg 3 + psycopg_pool on haasd's refresh write path.

    .venv/bin/python bench/pg_driver.py [--ops 2000] [--tasks 1,8]

Starts a throwaway PostgreSQL cluster of its own (initdb as the ``postgres`` system user
in a temporary directory, Unix socket only, ``synchronous_commit = on`` and ``fsync``
on: a refresh result is durable when it returns), creates a ``grants`` table shaped as
haasd's, fills it with 1,000 rows of sealed-size blobs, and then, for each driver in turn
(both in the same run, order flipped each round), times:

* **finish refresh**: the fenced conditional ``UPDATE ... WHERE human_id = $1 AND
  intent_attempt_id = $2`` of one grant row with two new ~300-byte token blobs, in its
  own transaction, a connection taken from the pool and given back for each;
* **point read**: ``SELECT`` of one grant row by its human id.

Each with ``--tasks`` concurrent tasks sharing one pool of 4 connections. It prints per
operation p50/p99 latency in ms, ops/s and asyncpg/psycopg ratios. Needs the PostgreSQL
server binaries (``/usr/lib/postgresql/*/bin``) and root or the ``postgres`` user.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg_pool

try:
    import asyncpg
except ImportError:  # not a dependency of haasd: only this comparison needs it
    raise SystemExit("bench/pg_driver.py compares with asyncpg: pip install asyncpg") from None

ROWS = 1000
BLOB = os.urandom(300)
SCHEMA = """CREATE TABLE grants (
    human_id TEXT PRIMARY KEY, environment TEXT NOT NULL, scope TEXT NOT NULL,
    access_token BYTEA NOT NULL, access_expires_at DOUBLE PRECISION NOT NULL,
    refresh_token BYTEA NOT NULL, refresh_expires_at DOUBLE PRECISION NOT NULL,
    last_refresh_at DOUBLE PRECISION, state TEXT NOT NULL,
    intent_attempt_id TEXT, version BIGINT NOT NULL DEFAULT 0)"""
FINISH = (
    "UPDATE grants SET access_token = {p}, refresh_token = {p}, access_expires_at = {p},"
    " last_refresh_at = {p}, version = version + 1"
    " WHERE human_id = {p} AND intent_attempt_id = {p}"
)
READ = "SELECT * FROM grants WHERE human_id = {p}"
POOL = 4


def start_cluster(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    """A cluster in ``root``/data listening on a socket in ``root``; its process and dsn."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql")
    bindir = Path(found[-1]).parent
    as_user = [] if os.geteuid() != 0 else ["runuser", "-u", "postgres", "--"]
    shutil.chown(root, "postgres") if os.geteuid() == 0 else None
    data = root / "data"
    subprocess.run(
        [*as_user, str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "bench"],
        check=True,
        capture_output=True,
    )
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [*as_user, str(bindir / "postgres"), "-D", str(data), "-k", str(root), "-p", str(port),
         "-c", "listen_addresses=", "-c", "synchronous_commit=on", "-c", "fsync=on"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    for _ in range(200):
        if (root / f".s.PGSQL.{port}").exists():
            break
        time.sleep(0.05)
    return server, f"postgresql://bench@/postgres?host={root}&port={port}"


async def prepare(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)  # one-off
    try:
        await conn.execute(SCHEMA)
        await conn.executemany(
            "INSERT INTO grants VALUES ($1, 'prod', 'tasks:read', $2, 1.0, $2, 2.0, NULL,"
            " 'active', 'attempt', 0)",
            [(f"usr_{i}", BLOB) for i in range(ROWS)],
        )
    finally:
        await conn.close()


Op = Callable[[int], Awaitable[Any]]


async def asyncpg_ops(dsn: str) -> tuple[Op, Op, Callable[[], Awaitable[None]]]:
    pool = await asyncpg.create_pool(dsn, min_size=POOL, max_size=POOL)
    finish_sql, read_sql = FINISH.format(p="$x"), READ.format(p="$1")
    n = iter(range(1, 100))
    finish_sql = finish_sql.replace("$x", "${}").format(*[next(n) for _ in range(6)])

    async def finish(i: int) -> Any:
        async with pool.acquire() as conn, conn.transaction():
            return await conn.execute(
                finish_sql, BLOB, BLOB, float(i), float(i), f"usr_{i % ROWS}", "attempt"
            )

    async def read(i: int) -> Any:
        async with pool.acquire() as conn:
            return await conn.fetchrow(read_sql, f"usr_{i % ROWS}")

    return finish, read, pool.close


async def psycopg_ops(dsn: str) -> tuple[Op, Op, Callable[[], Awaitable[None]]]:
    pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=POOL, max_size=POOL, open=False)
    await pool.open(wait=True)
    finish_sql, read_sql = FINISH.format(p="%s"), READ.format(p="%s")

    async def finish(i: int) -> Any:
        async with pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                finish_sql, (BLOB, BLOB, float(i), float(i), f"usr_{i % ROWS}", "attempt")
            )
            return cur.rowcount

    async def read(i: int) -> Any:
        async with pool.connection() as conn:
            cur = await conn.execute(read_sql, (f"usr_{i % ROWS}",))
            return await cur.fetchone()

    return finish, read, pool.close


async def measure(op: Op, ops: int, tasks: int) -> tuple[float, float, float]:
    """p50 ms, p99 ms, ops/s of ``ops`` calls of ``op`` spread over ``tasks`` tasks."""
    latencies: list[float] = []
    per_task = ops // tasks

    async def worker(base: int) -> None:
        for i in range(per_task):
            t = time.perf_counter()
            await op(base + i)
            latencies.append(time.perf_counter() - t)

    start = time.perf_counter()
    async with anyio.create_task_group() as tg:
        for w in range(tasks):
            tg.start_soon(worker, w * per_task)
    elapsed = time.perf_counter() - start
    q = statistics.quantiles(latencies, n=100)
    return q[49] * 1000, q[98] * 1000, len(latencies) / elapsed


async def run(dsn: str, ops: int, tasks_list: list[int], rounds: int) -> None:
    await prepare(dsn)
    drivers = {"asyncpg": asyncpg_ops, "psycopg": psycopg_ops}
    results: dict[tuple[str, str, int], list[tuple[float, float, float]]] = {}
    for r in range(rounds):
        order = list(drivers) if r % 2 == 0 else list(reversed(drivers))
        for name in order:
            finish, read, close = await drivers[name](dsn)
            try:
                for tasks in tasks_list:
                    await measure(finish, 100, tasks)  # warm up
                    for what, op in (("finish refresh", finish), ("point read", read)):
                        results.setdefault((what, name, tasks), []).append(
                            await measure(op, ops, tasks)
                        )
            finally:
                await close()
    print(f"{'operation':<16}{'tasks':>6}{'driver':>10}{'p50 ms':>9}{'p99 ms':>9}{'ops/s':>9}")
    for what in ("finish refresh", "point read"):
        for tasks in tasks_list:
            med = {}
            for name in drivers:
                rs = results[(what, name, tasks)]
                med[name] = tuple(statistics.median(x[k] for x in rs) for k in range(3))
                p50, p99, rate = med[name]
                print(f"{what:<16}{tasks:>6}{name:>10}{p50:>9.3f}{p99:>9.3f}{rate:>9.0f}")
            a, p = med["asyncpg"], med["psycopg"]
            print(f"{'':<16}{'':>6}{'ratio':>10}{a[0] / p[0]:>9.2f}{a[1] / p[1]:>9.2f}"
                  f"{a[2] / p[2]:>9.2f}   (asyncpg / psycopg)")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", type=int, default=2000)
    parser.add_argument("--tasks", default="1,8")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="haasd-pgbench-") as tmp:
        server, dsn = start_cluster(Path(tmp))
        try:
            anyio.run(run, dsn, args.ops, [int(t) for t in args.tasks.split(",")], args.rounds)
        finally:
            server.terminate()
            server.wait()


if __name__ == "__main__":
    main()
