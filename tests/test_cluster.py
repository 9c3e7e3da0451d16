"""Several haasd instances on one PostgreSQL store: the whole daemon, in this process.

Each instance is ``haasd.app.run`` with a config of its own (its own socket) on one
throwaway database (tests/pg_cluster.py) and one simulator with rotation and strict reuse
detection, so that a second refresh with a spent token would kill the grant. The clock
that schedules refreshes is a shared manual one; leases run on PostgreSQL's real clock.
"""

from __future__ import annotations

import random
import shutil
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import anyio
import httpx
import pytest
from harness import simulator
from pg_cluster import PgCluster, PgDatabase
from support import eventually
from support_daemon import daemon_at, write_config, write_key

from haasd.app import Daemon
from haasd.clock import ManualClock
from haasd.crypto import Key, Sealer
from haasd.grants import Policy, new_grant
from haasd.pgstore import PgStore
from haasd.simulator import Simulator
from haasd.tokens import parse_token_response

HUMANS = [f"usr_c{n}" for n in range(6)]


@dataclass
class Instance:
    daemon: Daemon
    http: httpx.AsyncClient

    async def token(self, human_id: str) -> str:
        reply = await self.http.get(f"/v1/tokens/{human_id}")
        assert reply.status_code == 200, reply.text
        token: str = reply.json()["access_token"]
        return token

    async def health(self) -> dict[str, object]:
        body: dict[str, object] = (await self.http.get("/v1/health")).json()
        return body


def cluster_config(directory: Path, key: Path, token_url: str, url: str) -> Path:
    directory.mkdir()
    shutil.copy(key, directory / "store.key")
    config = write_config(directory, token_url, extra='[cluster]\nlease = "4s"\n')
    text = config.read_text().replace('path = "haasd.db"', f'url = "{url}"')
    config.write_text(text)
    return config


async def seed(url: str, key: Path, sim: Simulator, humans: list[str]) -> None:
    sealer = Sealer(Key.from_text(key.read_text()))
    store = await PgStore.open(url, sealer)
    async with store:
        for human_id in humans:
            answer = parse_token_response(await sim.consent(human_id))
            grant = new_grant(answer, "test", sim.clock.time(), Policy(), random.Random(1))
            await store.put_grant(grant)


@asynccontextmanager
async def instances(
    base: Path, db: PgDatabase, sim: Simulator, clock: ManualClock, count: int
) -> AsyncIterator[list[Instance]]:
    key = write_key(base)
    await seed(db.socket_url, key, sim, HUMANS)
    async with AsyncExitStack() as stack:
        started = []
        for n in range(count):
            config = cluster_config(base / f"i{n}", key, sim.token_url, db.socket_url)
            daemon, http = await stack.enter_async_context(daemon_at(config, clock))
            started.append(Instance(daemon, http))
        yield started


async def converged(cluster: list[Instance], human_id: str, old: set[str]) -> str:
    """Wait until every instance holds the same token for ``human_id``, one not in
    ``old`` (the server may have answered before the answer was written); that token."""

    def held() -> set[str]:
        grants = [i.daemon.refresher.grant(human_id) for i in cluster]
        return {g.access_token.reveal() if g is not None else "" for g in grants}

    await eventually(lambda: len(held()) == 1 and not held() & old, 10)
    return held().pop()


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(start=time.time())


async def test_instances_refresh_each_grant_once_per_cycle_and_all_serve_it(
    short_dir: Path, pg_database: PgDatabase, clock: ManualClock
) -> None:
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_detection=True)
    async with sim.running(), instances(short_dir, pg_database, sim, clock, 3) as cluster:
        served: dict[str, set[str]] = {h: set() for h in HUMANS}
        for cycle in range(3):
            await clock.advance(3000)  # past the refresh point of every grant

            def refreshed(expected: int = cycle + 1) -> bool:
                return all(sim.stats.refreshes[h] >= expected for h in HUMANS)

            await eventually(refreshed, 20)
            for human_id in HUMANS:
                new = await converged(cluster, human_id, served[human_id])
                tokens = {await i.token(human_id) for i in cluster}
                assert tokens == {new}, "every instance serves the one new token"
                assert sim.validate_access_token(new) == human_id
                served[human_id].add(new)
        assert all(sim.stats.refreshes[h] == 3 for h in HUMANS), sim.stats.refreshes
        assert sim.stats.reuse_events == 0
        assert sim.stats.families_revoked == 0
        health = await cluster[0].health()
        assert health["status"] == "ok", health
        assert len(health["cluster"]["instances"]) >= 1  # type: ignore[index]
        first = cluster[0].daemon.refresher

        def all_seen() -> bool:
            return len(first.health().instances) == 3

        await eventually(all_seen, 10)
        # the scheduled refreshes were spread: more than one instance spent tokens
        spenders = [i for i in cluster if i.daemon.refresher.stats.refreshes["ok"] > 0]
        assert len(spenders) >= 2


async def test_an_on_demand_refresh_elsewhere_waits_for_the_holder(
    short_dir: Path, pg_database: PgDatabase, clock: ManualClock
) -> None:
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_detection=True)
    async with sim.running(), instances(short_dir, pg_database, sim, clock, 2) as (a, b):
        human = HUMANS[0]
        await clock.advance(100)  # the token in hand no longer has the 3590s asked for
        sim.latency(1.0)  # the first refresh is slow: the other instance asks meanwhile
        async with anyio.create_task_group() as tg:
            replies: list[httpx.Response] = []

            async def ask(instance: Instance) -> None:
                reply = await instance.http.get(f"/v1/tokens/{human}?min_ttl=3590&wait=10")
                replies.append(reply)

            tg.start_soon(ask, a)
            await anyio.sleep(0.2)
            tg.start_soon(ask, b)
        assert [r.status_code for r in replies] == [200, 200], [r.text for r in replies]
        assert len({r.json()["access_token"] for r in replies}) == 1
        assert sim.stats.refreshes[human] == 1, "never a second request to HaaS"
        assert sim.stats.reuse_events == 0


async def test_without_the_database_instances_serve_what_they_hold_then_catch_up(
    short_dir: Path, pg_cluster: PgCluster, pg_database: PgDatabase, clock: ManualClock
) -> None:
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_detection=True)
    async with sim.running(), instances(short_dir, pg_database, sim, clock, 2) as cluster:
        before = {h: await cluster[0].token(h) for h in HUMANS}
        pg_cluster.kill()  # the database is gone, abruptly

        def degraded() -> bool:
            return all(not i.daemon.refresher.health().ok for i in cluster)

        await eventually(degraded, 10)
        reasons = cluster[1].daemon.refresher.health().reasons
        assert any("unreachable" in r for r in reasons), reasons
        await clock.advance(3000)  # past every refresh point: no refresh can be written
        await anyio.sleep(1.0)
        assert sum(sim.stats.refreshes.values()) == 0, "nothing is spent while cut off"
        for instance in cluster:  # the tokens in hand are still good for ten minutes
            assert {h: await instance.token(h) for h in HUMANS} == before

        pg_cluster.start()

        def recovered() -> bool:
            return all(i.daemon.refresher.health().ok for i in cluster)

        await clock.advance(600)  # the postponed refreshes come due again
        await eventually(lambda: all(sim.stats.refreshes[h] == 1 for h in HUMANS), 20)
        await eventually(recovered, 15)
        for human_id in HUMANS:
            new = await converged(cluster, human_id, {before[human_id]})
            assert {await i.token(human_id) for i in cluster} == {new}
            assert sim.validate_access_token(new) == human_id
        assert sim.stats.reuse_events == 0 and sim.stats.families_revoked == 0


async def test_a_consent_started_on_one_instance_finishes_on_another(
    short_dir: Path, pg_database: PgDatabase, clock: ManualClock
) -> None:
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_detection=True)
    async with sim.running(), instances(short_dir, pg_database, sim, clock, 2) as (a, b):
        sim.queue_human("usr_new_1")
        started = await a.http.post("/v1/consents", json={"human_id": "usr_new_1"})
        assert started.status_code == 201, started.text
        back = await sim.visit(started.json()["authorization_url"])
        finished = await b.http.post("/v1/consents/callback", json={"callback_url": back})
        assert finished.status_code == 201, finished.text
        again = await a.http.post("/v1/consents/callback", json={"callback_url": back})
        assert again.status_code == 400, "a consent is finished once, cluster-wide"
        await eventually(lambda: a.daemon.refresher.grant("usr_new_1") is not None, 10)
        assert await a.token("usr_new_1") == await b.token("usr_new_1")
        await eventually(lambda: len(a.daemon.refresher.health().instances) == 2, 10)
        metrics = (await a.http.get("/metrics")).text
        assert "haasd_cluster_instances 2.0" in metrics
        assert "haasd_cluster_store_reachable 1.0" in metrics
