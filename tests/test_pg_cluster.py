"""The throwaway PostgreSQL cluster the store tests run against (tests/pg_cluster.py).

It must start, take connections over its socket and over TCP, keep what was committed
across a SIGKILL of the whole server, and come back after a stop or a kill — the crash
tests of the PostgreSQL store rely on all of it. Skips where no cluster can run here.
"""

from __future__ import annotations

import os
import pwd
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest
from pg_cluster import (
    PgCluster,
    PgDatabase,
    PgUnavailable,
    find_bindir,
    group_alive,
    run_as,
    unavailable,
)


def _accepts_tcp(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return True
    except OSError:
        return False


def test_a_cluster_answers_sql_over_its_socket(pg_cluster: PgCluster) -> None:
    assert pg_cluster.running
    assert pg_cluster.psql("SELECT 1 + 1") == "2"
    assert pg_cluster.psql("SHOW fsync") == "off"
    assert pg_cluster.psql("SHOW server_encoding") == "UTF8"
    assert (Path(pg_cluster.host) / f".s.PGSQL.{pg_cluster.port}").is_socket()


def test_a_cluster_listens_on_loopback_at_its_own_port(pg_cluster: PgCluster) -> None:
    assert pg_cluster.port != 5432
    assert _accepts_tcp(pg_cluster.port)
    assert pg_cluster.url == f"postgresql://postgres@127.0.0.1:{pg_cluster.port}/postgres"


def test_the_server_runs_unprivileged(pg_cluster: PgCluster) -> None:
    pid = pg_cluster.pid
    assert pid is not None
    uid = os.stat(f"/proc/{pid}").st_uid
    assert uid != 0
    if os.geteuid() == 0:
        assert uid == pwd.getpwnam("postgres").pw_uid


def test_each_test_gets_a_fresh_empty_database(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    tables = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
    assert pg_cluster.psql(tables, pg_database.name) == "0"
    pg_cluster.psql("CREATE TABLE t (x int)", pg_database.name)
    assert pg_cluster.psql(tables, pg_database.name) == "1"
    other = pg_cluster.new_database()
    try:
        assert other.name != pg_database.name
        assert pg_cluster.psql(tables, other.name) == "0"
    finally:
        pg_cluster.drop_database(other.name)
    assert pg_database.url.endswith(f"/{pg_database.name}")
    assert f"dbname={pg_database.name}" in pg_database.dsn


def test_commits_survive_a_kill_and_the_restart_recovers(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    db = pg_database.name
    pg_cluster.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1), (2), (3)", db)
    old_pid = pg_cluster.pid
    assert old_pid is not None
    pg_cluster.kill()
    assert not pg_cluster.running
    assert not _accepts_tcp(pg_cluster.port)
    with pytest.raises(RuntimeError, match="psql failed"):
        pg_cluster.psql("SELECT 1", db)
    pg_cluster.start()
    assert pg_cluster.pid != old_pid
    assert pg_cluster.psql("SELECT sum(x) FROM t", db) == "6"
    assert "database system was interrupted" in pg_cluster.log_tail(100)


def test_a_stopped_cluster_starts_again_at_the_same_address(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    port = pg_cluster.port
    pg_cluster.stop()
    assert not pg_cluster.running
    assert not _accepts_tcp(port)
    pg_cluster.start()
    assert pg_cluster.port == port
    assert pg_cluster.psql("SELECT current_database()", pg_database.name) == pg_database.name
    pg_cluster.restart()
    assert pg_cluster.psql("SELECT 1", pg_database.name) == "1"


def test_a_cluster_of_its_own_is_independent(pg_cluster: PgCluster) -> None:
    own = PgCluster.create()
    try:
        own.start()
        assert own.port != pg_cluster.port
        own.psql("CREATE DATABASE mine")
        assert "mine" not in pg_cluster.psql("SELECT datname FROM pg_database").split()
    finally:
        own.destroy()
    assert not own.base.exists()


def test_a_first_start_takes_another_port_when_its_own_is_taken() -> None:
    own = PgCluster.create()
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as squatter:
            squatter.bind(("127.0.0.1", 0))
            squatter.listen()
            taken = squatter.getsockname()[1]
            own.port = taken
            own.start()
            assert own.port != taken
            assert "already in use" in own.log_tail(100)
            assert own.psql("SELECT 1") == "1"
    finally:
        own.destroy()


@pytest.mark.parametrize("address", ["url", "socket_url", "dsn"])
def test_the_driver_connects_by_each_address(pg_database: PgDatabase, address: str) -> None:
    """psycopg, the PostgreSQL store's driver, reads each form the fixture hands out."""
    with psycopg.connect(getattr(pg_database, address), connect_timeout=10) as connection:
        row = connection.execute("SELECT current_database(), current_user").fetchone()
    assert row == (pg_database.name, "postgres")


def test_a_killed_group_whose_zombies_nobody_reaps_counts_as_gone() -> None:
    """After a kill, orphaned backends may stay zombies where init does not reap them;
    waiting for them would stall every crash test, and a zombie holds no shared memory."""
    sleep = [sys.executable, "-c", "import time; time.sleep(30)"]
    sleeper = subprocess.Popen(sleep, start_new_session=True)
    try:
        assert group_alive(sleeper.pid)
        sleeper.kill()
        while Path(f"/proc/{sleeper.pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z":
            time.sleep(0.01)  # the kernel's own pace: no event to await for a zombie
        assert not group_alive(sleeper.pid)  # a zombie now, not yet reaped by us
    finally:
        sleeper.kill()
        sleeper.wait()


def test_the_reasons_to_skip_are_said(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without binaries, or as root without a ``postgres`` user, the reason is given."""
    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr("pg_cluster.Path.glob", lambda self, pattern: iter(()))
    assert find_bindir() is None
    reason = unavailable()
    assert reason is not None and "no PostgreSQL server binaries" in reason
    with pytest.raises(PgUnavailable, match="no PostgreSQL server binaries"):
        PgCluster.create()


def test_root_without_a_postgres_user_is_said(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_user(name: str) -> pwd.struct_passwd:
        raise KeyError(name)

    monkeypatch.setattr("pg_cluster.os.geteuid", lambda: 0)
    monkeypatch.setattr("pg_cluster.pwd.getpwnam", no_user)
    with pytest.raises(PgUnavailable, match="no unprivileged 'postgres' user"):
        run_as()
