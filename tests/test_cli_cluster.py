"""``haasd status`` (online) shows the instances sharing a PostgreSQL store: the whole
daemon in this process on a real socket — on SQLite, and twice on one throwaway database
(tests/pg_cluster.py) — asked by ``python -m haasd`` in a subprocess."""

from __future__ import annotations

import json
import os
import shutil
import socket
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

from harness import simulator
from pg_cluster import PgDatabase
from support import eventually
from support_daemon import MARIA, daemon_at, daemon_running, haasd_cli, write_config, write_key

from haasd.app import Daemon
from haasd.cli._online import cluster_block
from haasd.client import Cluster, ClusterInstance
from haasd.clock import ManualClock


def name_of(daemon: Daemon) -> str:
    instance = daemon.refresher.health().instance
    assert instance is not None, "an instance on PostgreSQL has a name"
    return instance


@asynccontextmanager
async def two_instances(base: Path, db: PgDatabase) -> AsyncIterator[tuple[Daemon, Daemon]]:
    """Two daemons with one key on ``db``, each with its own socket, both seen by both."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock)
    key = write_key(base)
    async with sim.running(), AsyncExitStack() as stack:
        started = []
        for name in ("a", "b"):
            directory = base / name
            directory.mkdir()
            shutil.copy(key, directory / "store.key")
            config = write_config(directory, sim.token_url, extra='[cluster]\nlease = "3s"\n')
            text = config.read_text().replace('path = "haasd.db"', f'url = "{db.socket_url}"')
            config.write_text(text)
            daemon, _ = await stack.enter_async_context(daemon_at(config, clock))
            started.append(daemon)
        a, b = started
        await eventually(lambda: all(len(d.refresher.health().instances) == 2 for d in started))
        yield a, b


async def test_status_on_postgresql_shows_every_instance_and_marks_the_one_asked(
    short_dir: Path, pg_database: PgDatabase
) -> None:
    async with two_instances(short_dir, pg_database) as (a, b):
        names = {name_of(a), name_of(b)}
        text_a = await haasd_cli("status", "--socket", str(a.socket_path))
        text_b = await haasd_cli("status", "--socket", str(b.socket_path))
        as_json = await haasd_cli("status", "--json", "--socket", str(a.socket_path))
    code, out, err = text_a
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert lines[:2] == ["haasd holds no grants", ""]
    assert lines[2] == "cluster: 2 instances"
    assert lines[3].split() == ["INSTANCE", "HOST/PID", "HEARTBEAT", "LEASES"]
    rows = {line.split()[0]: line for line in lines[4:]}
    assert set(rows) == names and len(lines) == 6
    here = f"{socket.gethostname()}/{os.getpid()}"  # both run in this test's process
    for name, row in rows.items():
        cells = row.split()
        assert cells[1] == here and cells[3] == "ago" and cells[4] == "0"
        assert float(cells[2].removesuffix("s")) < 3, "heartbeats every lease/3 = 1 s"
        assert row.endswith("this instance") == (name == name_of(a))
    marked_by_b = [line.split()[0] for line in text_b[1].splitlines() if "this instance" in line]
    assert marked_by_b == [name_of(b)]

    code, out, err = as_json
    assert (code, err) == (0, "")
    body = json.loads(out)
    assert body["humans"] == []
    assert body["cluster"]["instance"] == name_of(a)
    listed = body["cluster"]["instances"]
    assert {i["instance"] for i in listed} == names
    assert all(set(i) == {"instance", "host", "pid", "heartbeat_age", "uptime", "leases"}
               for i in listed)  # fmt: skip
    assert all(i["pid"] == os.getpid() and i["leases"] == 0 for i in listed)


async def test_status_on_sqlite_shows_no_cluster(short_dir: Path) -> None:
    async with daemon_running(short_dir) as running:
        code, out, err = await haasd_cli("status", "--socket", running.socket)
        as_json = await haasd_cli("status", "--json", "--socket", running.socket)
    assert (code, err) == (0, "")
    lines = out.splitlines()
    assert len(lines) == 2 and lines[1].split()[0] == MARIA
    assert "cluster" not in out
    assert as_json[0] == 0
    assert set(json.loads(as_json[1])) == {"humans"}


def test_the_cluster_block_escapes_what_other_instances_wrote() -> None:
    """Names and hosts come from the database, where any instance (or anyone with write
    access) may have put control characters: shown escaped, never raw."""
    hostile = ClusterInstance("h\x1b[2J/1/abc", "h\x1b[2J", 1, 75.0, 100.0, 3)
    block = cluster_block(Cluster("me/2/def", (hostile,)))
    assert "\x1b" not in block
    assert block.splitlines() == [
        "cluster: 1 instance",
        "  INSTANCE        HOST/PID    HEARTBEAT  LEASES",
        "  h\\x1b[2J/1/abc  h\\x1b[2J/1  1m15s ago  3",
    ]
