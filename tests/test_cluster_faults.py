"""The fault campaign (tests/cluster_campaign.py), short: 3 ``haasd run`` processes on
one PostgreSQL database, ≥ 20 ``kill -9``s, instances paused past their lease and
PostgreSQL restarted mid-refresh, against the simulator with rotation and reuse
detection. The long campaign (≥ 200 kills) is ``bench/cluster_faults.py``.

With a reuse grace window nothing may be lost and no rotation refreshed twice; with
strict reuse detection a grant may be lost only to a kill or pause that landed after its
refresh was sent and before the answer was written. Every token served must be live.
"""

from __future__ import annotations

import os
import random
import time
from pathlib import Path

import anyio
import psycopg
import pytest
from cluster_campaign import Campaign
from cluster_nodes import Leases, Node, node_config, seed
from cluster_result import Plan
from harness import CLIENT_ID, CLIENT_SECRET, simulator
from pg_cluster import PgCluster, PgDatabase
from support import eventually
from support_daemon import daemon_at, write_key

from haasd.clock import ManualClock, SystemClock
from haasd.errors import HaasdError
from haasd.pgstore._sql import RATE_LOCK
from haasd.simulator import Simulator


def campaign_seed() -> int:
    """$HAASD_CAMPAIGN_SEED repeats a run; otherwise a new seed, printed."""
    chosen = os.environ.get("HAASD_CAMPAIGN_SEED")
    return int(chosen) if chosen else random.SystemRandom().randrange(1, 10**6)


@pytest.mark.slow
@pytest.mark.timeout(240)
@pytest.mark.parametrize(
    "grace",
    [30.0, 0.0],
    ids=["grace", "strict"],
)
async def test_three_instances_survive_kills_pauses_and_database_restarts(
    short_dir: Path, pg_cluster: PgCluster, pg_database: PgDatabase, grace: float
) -> None:
    plan = Plan(seed=campaign_seed(), grace=grace, kills=20, stops=1, pg_restarts=2)
    print(f"campaign seed {plan.seed} (HAASD_CAMPAIGN_SEED={plan.seed} repeats it)")
    result = await Campaign(plan, pg_cluster, pg_database, short_dir).run()
    print(result.table())
    assert not result.problems(), "\n".join([*result.problems(), result.table()])
    assert result.count("kill") >= 20
    assert result.refreshes >= 3 * plan.humans, "the grants were refreshed all along"
    assert result.served.ok > 100, result.served


async def test_an_answer_that_meets_a_database_restart_is_written_once_it_is_back(
    short_dir: Path, pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    """The campaign's first finding: PostgreSQL restarted while a refresh's request was
    at the server, so the answer's write failed; the rotated token existed only in
    memory and was dropped, and the next refresh spent the old token again (a grace
    replay, or under strict reuse detection the grant revoked)."""
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_detection=True)
    human = "usr_f0"
    async with sim.running():
        key = write_key(short_dir)
        await seed(pg_database.socket_url, key, sim, [human])
        url, token_url = pg_database.socket_url, sim.token_url
        config = node_config(short_dir / "i0", key, token_url, url, lease=4.0, rpm=600)
        async with daemon_at(config, clock) as (daemon, _http):
            sim.latency(1.0)  # the request is at the server while PostgreSQL restarts
            async with anyio.create_task_group() as tg:

                async def refresh() -> None:
                    try:
                        await daemon.refresher.refresh_now(human)
                    except HaasdError:
                        pass  # what the first refresh says is not the point

                tg.start_soon(refresh)
                await eventually(lambda: sim.stats.token_requests["refresh_token"] > 0)
                # PostgreSQL dies just before the answer comes, and starts again
                await anyio.sleep(0.95)
                await anyio.to_thread.run_sync(pg_cluster.kill)
                await anyio.to_thread.run_sync(pg_cluster.start)
            assert sim.stats.refreshes[human] == 1, "the server rotated once"
            sim.latency(0)
            await clock.advance(301)  # past the on-demand cooldown: refresh again
            await daemon.refresher.refresh_now(human)
    assert sim.stats.spent_presented == [], "the rotated token was kept, the old one not sent"
    assert sim.has_active_grant(human)
    assert sim.stats.refreshes[human] == 2


@pytest.mark.timeout(90)
async def test_a_paused_instance_sends_no_refresh_once_its_lease_has_passed(
    short_dir: Path, pg_database: PgDatabase
) -> None:
    """The campaign's second finding. The instance due to refresh a grant takes its
    lease, checks it, and waits for the cluster's rate budget (held here, as a busy
    cluster would); it is paused there past its lease; the other instance takes over
    and rotates the token. Resumed, the first must not send the spent token."""
    sim = Simulator(  # real time: processes cannot share a manual clock
        SystemClock(), client_id=CLIENT_ID, client_secret=CLIENT_SECRET,
        rotate_refresh_tokens=True, reuse_detection=True, expires_in=6,
    )  # fmt: skip
    human, lease = "usr_f0", 3.0
    async with sim.running():
        key = write_key(short_dir)
        await seed(pg_database.socket_url, key, sim, [human])
        leases = Leases(pg_database.socket_url)
        nodes = [
            Node(name, node_config(short_dir / name, key, sim.token_url,
                                   pg_database.socket_url, lease=lease, rpm=600))
            for name in ("a", "b")
        ]  # fmt: skip
        try:
            for node in nodes:
                node.start()
            for node in nodes:
                await node.until_serving()
            async with await psycopg.AsyncConnection.connect(pg_database.socket_url) as hold:
                await hold.execute("SELECT pg_advisory_xact_lock(%s)", (RATE_LOCK,))
                pid = await leases.holder([n.pid for n in nodes], within=15.0)
                assert pid is not None, "the grant came due and an instance took its lease"
                paused = next(n for n in nodes if n.pid == pid)
                await waiting_for_the_budget(leases)
                paused.pause()
                await hold.rollback()  # the budget frees; the paused instance sleeps on
            # the other instance takes over and rotates
            await eventually(lambda: sim.stats.refreshes[human] >= 1, 30)
            paused.resume()
            await anyio.sleep(2.0)
        finally:
            for node in nodes:
                await node.stop()
    assert sim.stats.spent_presented == [], "the resumed instance sent the spent token"
    assert sim.has_active_grant(human)


async def waiting_for_the_budget(leases: Leases) -> None:
    """Until a session waits for the rate budget's advisory lock."""
    waiting = "SELECT 1 FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
    with anyio.fail_after(10):
        while True:
            if await leases.query(waiting):
                return
            await anyio.sleep(0.01)
