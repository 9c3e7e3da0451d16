"""Shared fixtures. anyio's own pytest plugin runs the async tests (anyio_mode = auto)."""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_cluster import PgCluster, PgDatabase
from pg_cluster import unavailable as pg_unavailable

from haasd.logs import configure_logging


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _quiet_logs() -> None:
    """Warnings and errors only, as an operator's default would show; tests about logs
    configure their own stream."""
    configure_logging("warning", "console", stream=sys.stderr)


@pytest.fixture
def debug_logs() -> None:
    """Let debug lines through, for tests that capture them (capture_logs)."""
    configure_logging("debug", "console", stream=sys.stderr)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory whose socket paths fit AF_UNIX's 108 bytes (pytest's tmp_path's do not)."""
    path = Path(tempfile.mkdtemp(prefix="hd", dir="/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def workdir(short_dir: Path) -> Path:
    """The directory of a daemon's config, store and socket: a :func:`short_dir`."""
    return short_dir


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    """A throwaway PostgreSQL cluster of the session's own (tests/pg_cluster.py), started;
    skips with the reason where none can run. Tests may stop, kill and restart it; the
    :func:`pg_database` fixture starts it again for the next test."""
    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = PgCluster.create()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def pg_database(pg_cluster: PgCluster) -> Iterator[PgDatabase]:
    """A fresh empty database in the session's cluster (started if a test left it down),
    dropped after the test."""
    pg_cluster.start()
    database = pg_cluster.new_database()
    yield database
    pg_cluster.start()
    pg_cluster.drop_database(database.name)
