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
import logging
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio
import psycopg
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


class Cluster:
    """A cluster in ``root``/data, listening only on a socket in ``root``."""

    def __init__(self, root: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        if not found:
            raise SystemExit("no PostgreSQL server binaries under /usr/lib/postgresql")
        self.bindir = Path(found[-1]).parent
        # initdb and postgres refuse root: as root, they run as the postgres user
        self.as_user: dict[str, Any] = {"user": "postgres"} if os.geteuid() == 0 else {}
        if os.geteuid() == 0:
            shutil.chown(root, "postgres")
        self.root, self.data = root, root / "data"
        initdb = [str(self.bindir / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "bench"]
        subprocess.run(initdb, check=True, capture_output=True, **self.as_user)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.dsn = f"postgresql://bench@/postgres?host={root}&port={self.port}"
        self.server: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.server = subprocess.Popen(
            [str(self.bindir / "postgres"), "-D", str(self.data),
             "-k", str(self.root), "-p", str(self.port), "-c", "listen_addresses=",
             "-c", "synchronous_commit=on", "-c", "fsync=on"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            **self.as_user,
        )  # fmt: skip
        probe = [str(self.bindir / "pg_isready"), "-q", "-h", str(self.root), "-p", str(self.port)]
        for _ in range(400):
            if subprocess.run(probe, check=False).returncode == 0:
                return
            time.sleep(0.05)
        raise SystemExit("the cluster did not start")

    def stop(self) -> None:
        """A fast shutdown (SIGINT): every session is ended, as a server restart does."""
        if self.server is not None:
            self.server.send_signal(signal.SIGINT)
            self.server.wait()
            self.server = None


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
        cluster = Cluster(Path(tmp))
        cluster.start()
        try:
            tasks = [int(t) for t in args.tasks.split(",")]
            anyio.run(run, cluster.dsn, args.ops, tasks, args.rounds)
            anyio.run(behaviour, cluster)
        finally:
            cluster.stop()


# -- behaviour that matters beside speed ------------------------------------------------


class Driver:
    """What the behaviour checks need of a driver: a pool, a read, a cancellable sleep,
    and LISTEN on a connection of its own."""

    def __init__(self, name: str, dsn: str) -> None:
        self.name, self.dsn = name, dsn
        self.pool: Any = None

    async def open(self) -> None:
        if self.name == "asyncpg":
            self.pool = await asyncpg.create_pool(self.dsn, min_size=POOL, max_size=POOL)
        else:
            self.pool = psycopg_pool.AsyncConnectionPool(
                self.dsn, min_size=POOL, max_size=POOL, open=False, kwargs={"autocommit": True}
            )
            await self.pool.open(wait=True)

    async def query(self, sql: str) -> Any:
        if self.name == "asyncpg":
            async with self.pool.acquire() as conn:
                return await conn.fetchval(sql)
        async with self.pool.connection() as conn:
            row = await (await conn.execute(sql)).fetchone()
            return row[0] if row else None

    async def notify_latency(self) -> float:
        """LISTEN on one connection, NOTIFY from the pool; seconds until it arrives."""
        got = anyio.Event()
        if self.name == "asyncpg":
            conn = await asyncpg.connect(self.dsn)
            await conn.add_listener("bench", lambda *_: got.set())
            start = time.perf_counter()
            await self.query("SELECT pg_notify('bench', 'x')")
            with anyio.fail_after(5):
                await got.wait()
            await conn.close()
            return time.perf_counter() - start
        aconn = await psycopg.AsyncConnection.connect(self.dsn, autocommit=True)
        await aconn.execute("LISTEN bench")
        start = time.perf_counter()
        await self.query("SELECT pg_notify('bench', 'x')")
        with anyio.fail_after(5):
            async for _ in aconn.notifies():
                break
        await aconn.close()
        return time.perf_counter() - start

    async def close(self) -> None:
        await self.pool.close()


async def cancelled_then_read(driver: Driver) -> str:
    """Cancel a statement in flight from anyio, then use the pool at once."""
    with anyio.move_on_after(0.2):
        await driver.query("SELECT pg_sleep(3)")
    start = time.perf_counter()
    try:
        with anyio.fail_after(5):
            await driver.query("SELECT 1")
    except Exception as exc:  # noqa: BLE001 - reported, not handled
        return f"next call failed: {type(exc).__name__}"
    sleeping = await driver.query(
        "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'SELECT pg_sleep%'"
    )
    return f"next call ok in {(time.perf_counter() - start) * 1000:.1f} ms; sleeps left {sleeping}"


async def calls_after_restart(driver: Driver, cluster: Cluster, calls: int = 8) -> str:
    """Restart the server under an open pool; which of the next calls fail."""
    cluster.stop()
    cluster.start()
    outcome = ""
    for _ in range(calls):
        try:
            with anyio.fail_after(10):
                await driver.query("SELECT 1")
            outcome += "ok "
        except Exception:  # noqa: BLE001 - counted, not handled
            outcome += "FAIL "
            if driver.name == "psycopg+check":  # what haasd's PgStore does on a broken one
                await driver.pool.check()
    return outcome.strip()


async def behaviour(cluster: Cluster) -> None:
    print("\nbehaviour (pool of 4; psycopg+check: pool.check() after a failed call)")
    logging.getLogger("psycopg").setLevel(logging.ERROR)  # its warnings are what we count
    for name in ("asyncpg", "psycopg", "psycopg+check"):
        driver = Driver(name, cluster.dsn)
        await driver.open()
        try:
            print(f"  {name:<8} cancel under anyio: {await cancelled_then_read(driver)}")
            print(
                f"  {name:<8} calls after a restart: {await calls_after_restart(driver, cluster)}"
            )
            ms = await driver.notify_latency() * 1000
            print(f"  {name:<8} LISTEN/NOTIFY: received in {ms:.2f} ms")
            row = await driver.query("SELECT 1.5::double precision")
            print(f"  {name:<8} types: double precision -> {type(row).__name__}")
        finally:
            await driver.close()


if __name__ == "__main__":
    main()
