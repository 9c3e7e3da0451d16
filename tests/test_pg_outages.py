"""PostgreSQL goes away while a haasd on it is refreshing: stopped (a fast shutdown) for
a few seconds, or refusing every new connection because all its slots are taken
(``max_connections``, SQLSTATE 53300) and haasd's own connections were ended.

The refresh in flight meets the outage between the server's answer and its write: the
rotated token exists only in memory and is written once the database takes
connections again (within two leases), so no rotation is lost. Meanwhile health is
degraded naming the store, the tokens in hand are served, and no other refresh is sent.
tests/test_cluster.py and tests/test_cluster_faults.py cover a killed and a restarted
server; this covers a stopped one and a full one, on a throwaway cluster of eight slots.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack, asynccontextmanager
from pathlib import Path

import anyio
import psycopg
import pytest
from cluster_nodes import node_config, seed
from harness import simulator
from pg_cluster import PgCluster, PgDatabase
from pg_cluster import unavailable as pg_unavailable
from support import eventually
from support_daemon import daemon_at, write_key

from haasd.clock import ManualClock
from haasd.errors import HaasdError

HUMANS = ["usr_o0", "usr_o1", "usr_o2"]
#: the throwaway cluster's slots: few, so that a handful of idle connections fill it
SLOTS = 8


@pytest.fixture(scope="module")
def small_cluster() -> Iterator[PgCluster]:
    reason = pg_unavailable()
    if reason is not None:
        pytest.skip(reason)
    cluster = PgCluster.create(settings=(f"max_connections={SLOTS}",))
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def small_database(small_cluster: PgCluster) -> Iterator[PgDatabase]:
    small_cluster.start()
    database = small_cluster.new_database()
    yield database
    small_cluster.start()
    small_cluster.drop_database(database.name)


async def connect_or_refused(dsn: str) -> psycopg.AsyncConnection | None:
    """A new connection, or None when the server refuses it for want of a slot."""
    refusal = None
    try:
        return await psycopg.AsyncConnection.connect(dsn, autocommit=True)
    except psycopg.OperationalError as exc:
        refusal = str(exc)
    assert "too many clients" in refusal, refusal
    return None


@asynccontextmanager
async def every_slot_taken(dsn: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """Idle connections in every slot of the cluster, and every other session ended:
    whoever connects now is refused with "too many clients". The first connection, for
    looking at the store meanwhile."""
    async with AsyncExitStack() as stack:
        held: list[psycopg.AsyncConnection] = []
        while True:
            while (conn := await connect_or_refused(dsn)) is not None:  # the free slots
                held.append(await stack.enter_async_context(conn))
            pids = [c.info.backend_pid for c in held]
            ended = await held[0].execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE backend_type = 'client backend' AND NOT pid = ANY(%s)",
                (pids,),
            )
            if not await ended.fetchall():
                break  # only ours are left, and they take every slot
        assert len(held) == SLOTS
        yield held[0]


async def intent_of(conn: psycopg.AsyncConnection, human_id: str) -> object:
    cur = await conn.execute(
        "SELECT intent_attempt_id FROM grants WHERE human_id = %s", (human_id,)
    )
    row = await cur.fetchone()
    assert row is not None
    return row[0]


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("outage", ["stopped", "refusing connections"])
async def test_a_database_outage_mid_refresh_loses_no_rotation(
    short_dir: Path, small_cluster: PgCluster, small_database: PgDatabase, outage: str
) -> None:
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_grace=0.0)
    victim = HUMANS[0]
    async with sim.running():
        key = write_key(short_dir)
        await seed(small_database.socket_url, key, sim, HUMANS)
        url, dsn = small_database.socket_url, small_database.dsn
        config = node_config(short_dir / "i0", key, sim.token_url, url, lease=4.0, rpm=600)
        async with daemon_at(config, clock) as (daemon, http):

            async def tokens() -> dict[str, str]:
                return {
                    h: (await http.get(f"/v1/tokens/{h}")).json()["access_token"] for h in HUMANS
                }

            before = await tokens()
            sim.latency(3.0)  # the request is at the server while the database goes
            async with anyio.create_task_group() as tg, AsyncExitStack() as outages:

                async def refresh() -> None:
                    try:
                        await daemon.refresher.refresh_now(victim)
                    except HaasdError:
                        pass  # what the first attempt says is not the point

                tg.start_soon(refresh)
                await eventually(lambda: sim.stats.token_requests["refresh_token"] > 0)
                if outage == "stopped":
                    await anyio.to_thread.run_sync(small_cluster.stop)
                else:
                    peek = await outages.enter_async_context(every_slot_taken(dsn))
                await eventually(lambda: sim.stats.refreshes[victim] == 1, 5)  # answered
                await eventually(lambda: not daemon.refresher.health().ok, 10)
                (reason,) = (await http.get("/v1/health")).json()["reasons"]
                assert reason.startswith("cluster: the store") and "unreachable" in reason
                if outage != "stopped":
                    assert await intent_of(peek, victim) is not None, "the answer is not written"
                await clock.advance(3000)  # every grant comes due: none can be refreshed
                await anyio.sleep(0.5)
                assert sum(sim.stats.refreshes.values()) == 1, "nothing else spent meanwhile"
                assert await tokens() == before, "the tokens in hand are served"
                # the database takes connections again, within two leases of the answer
                if outage == "stopped":
                    await anyio.to_thread.run_sync(small_cluster.start)
                else:
                    await outages.aclose()
            sim.latency(0)
            await eventually(lambda: daemon.refresher.health().ok, 20)
            await clock.advance(600)  # the postponed refreshes come due again
            await eventually(lambda: all(sim.stats.refreshes[h] >= 1 for h in HUMANS), 20)
            after = await tokens()
            for human in HUMANS:
                assert after[human] != before[human]
                assert sim.validate_access_token(after[human]) == human
    assert sim.stats.spent_presented == [], "no refresh token was presented twice"
    assert sim.stats.reuse_events == 0 and sim.stats.families_revoked == 0
    assert all(sim.has_active_grant(h) for h in HUMANS)
