"""Rounds of PostgreSQL outages in the middle of refreshes: no rotation lost.

One haasd (the whole daemon, in this process) on a throwaway cluster of eight slots,
against the simulator with rotation and strict reuse detection. Each round, drawn from a
seeded generator: one human's refresh is sent (the simulator holds its answer 3 s), and
meanwhile the database is stopped (a fast shutdown) or every slot is taken by idle
connections and haasd's own sessions are ended ("too many clients", SQLSTATE 53300); the
answer meets the outage, every grant comes due, the outage lasts 1 to 4 s more, then the
database is back. Checked every round: health degraded naming the store while it is
out; the tokens in hand served while they live; nothing else sent to the server; health ok
again once it is back; the answer written (no rotation lost) and every grant refreshed
on from its newest token. Used by tests/test_pg_outages.py and bench/pg_outages.py.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio
import httpx
import psycopg
from cluster_nodes import node_config, seed
from harness import simulator
from pg_cluster import PgCluster, PgDatabase
from support import eventually
from support_daemon import daemon_at, write_key

from haasd.app import Daemon
from haasd.clock import ManualClock
from haasd.errors import HaasdError
from haasd.simulator import Simulator

HUMANS: Final = ("usr_o0", "usr_o1", "usr_o2")
MODES: Final = ("stopped", "refusing connections")
#: the throwaway cluster's slots: few, so that a handful of idle connections fill it
SLOTS: Final = 8
#: how far the clock moves during an outage: past every grant's refresh point (45 min
#: ± 3 after its token was issued, in the last round's 10 minutes), and not past its
#: expiry (60 min): the tokens in hand must still be served
COME_DUE: Final = 2940.0
#: what a token must have left at the start of a round (its last 10 min of 60 issued)
FRESH: Final = 3000


@dataclass
class OutageTally:
    rounds: Counter[str] = field(default_factory=Counter)
    refreshes: int = 0
    problems: list[str] = field(default_factory=list)


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
    sql = "SELECT intent_attempt_id FROM grants WHERE human_id = %s"
    row = await (await conn.execute(sql, (human_id,))).fetchone()
    assert row is not None
    return row[0]


@dataclass
class Rig:
    cluster: PgCluster
    database: PgDatabase
    daemon: Daemon
    http: httpx.AsyncClient
    sim: Simulator
    clock: ManualClock

    async def tokens(self, query: str = "") -> dict[str, str]:
        out = {}
        for human in HUMANS:
            reply = await self.http.get(f"/v1/tokens/{human}{query}")
            out[human] = reply.json().get("access_token", f"({reply.status_code})")
        return out

    def ok(self) -> bool:
        return self.daemon.refresher.health().ok


async def during(rig: Rig, mode: str, victim: str, before: dict[str, str], n: int) -> list[str]:
    """The checks while the database is out: what broke."""
    sim, problems = rig.sim, []
    reasons = (await rig.http.get("/v1/health")).json()["reasons"]
    if not any(r.startswith("cluster: the store") and "unreachable" in r for r in reasons):
        problems.append(f"round {n} ({mode}): health does not name the store: {reasons}")
    spent = sum(sim.stats.refreshes.values())
    await rig.clock.advance(COME_DUE)  # every grant comes due: none can be refreshed
    await anyio.sleep(0.5)
    if sum(sim.stats.refreshes.values()) != spent:
        problems.append(f"round {n} ({mode}): a refresh was sent while the store was out")
    served = await rig.tokens("?wait=0")  # at once, from memory
    for human in HUMANS:
        expires = sim.access_token_expires_at(before[human]) or 0.0
        live = expires > rig.clock.time() + 5.0
        if served[human].startswith("("):  # an error: only once the token in hand has ended
            if live:
                problems.append(f"round {n} ({mode}): {human}'s token in hand was not served")
        elif sim.validate_access_token(served[human]) != human:
            problems.append(f"round {n} ({mode}): {human} was served a token not live")
    return problems


async def one_round(rig: Rig, n: int, mode: str, victim: str, hold: float) -> list[str]:
    sim, problems = rig.sim, []
    # every token fresh (issued in the last 10 min, as COME_DUE assumes): none comes due
    # in the round's first minutes, to race the victim's refresh or the outage; then
    # past the on-demand cooldown such a refresh started
    before = await rig.tokens(f"?min_ttl={FRESH}")
    await rig.clock.advance(2.0)
    answered = sim.stats.refreshes[victim] + 1
    requests = sim.stats.token_requests["refresh_token"]
    sim.latency(3.0)  # the request is at the server while the database goes
    async with anyio.create_task_group() as tg, AsyncExitStack() as outage:
        said: list[str] = []

        async def refresh() -> None:
            try:
                await rig.daemon.refresher.refresh_now(victim)
            except HaasdError as exc:
                said.append(str(exc))  # what the attempt met, once it is over

        tg.start_soon(refresh)
        with contextlib.suppress(AssertionError):
            await eventually(
                lambda: sim.stats.token_requests["refresh_token"] > requests or bool(said), 5
            )
        if sim.stats.token_requests["refresh_token"] == requests:
            return [f"round {n} ({mode}): {victim}'s refresh was not sent: {said}"]
        if mode == "stopped":
            await anyio.to_thread.run_sync(rig.cluster.stop)
        else:
            peek = await outage.enter_async_context(every_slot_taken(rig.database.dsn))
        await eventually(lambda: sim.stats.refreshes[victim] == answered, 5)
        await eventually(lambda: not rig.ok(), 10)
        if mode != "stopped" and await intent_of(peek, victim) is None:
            problems.append(f"round {n} ({mode}): the answer was written despite the outage")
        problems += await during(rig, mode, victim, before, n)
        await anyio.sleep(hold)
        if mode == "stopped":
            await anyio.to_thread.run_sync(rig.cluster.start)
    sim.latency(0)
    return problems + await after_outage(rig, mode, victim, before, n)


async def after_outage(
    rig: Rig, mode: str, victim: str, before: dict[str, str], n: int
) -> list[str]:
    """The checks once the database is back: what broke."""
    problems = []
    with contextlib.suppress(AssertionError):
        await eventually(rig.ok, 30)
    if not rig.ok():
        problems.append(f"round {n} ({mode}): still degraded: {rig.daemon.refresher.health()}")
    await rig.clock.advance(600)  # the postponed refreshes come due again
    after = await rig.tokens()  # refreshed on demand if the schedule has not yet
    problems.extend(
        f"round {n} ({mode}): {human} not served a live token"
        for human in HUMANS
        if rig.sim.validate_access_token(after[human]) != human
    )
    if after[victim] == before[victim]:
        problems.append(f"round {n} ({mode}): the answer met by the outage was not kept")
    return problems


async def campaign(
    directory: Path,
    cluster: PgCluster,
    database: PgDatabase,
    rounds: int,
    seed_: int,
    modes: Sequence[str] = MODES,
) -> OutageTally:
    rng = random.Random(seed_)
    clock = ManualClock(start=time.time())
    sim = simulator(clock, rotate_refresh_tokens=True, reuse_grace=0.0)
    tally = OutageTally()
    async with sim.running():
        key = write_key(directory)
        await seed(database.socket_url, key, sim, HUMANS)
        url = database.socket_url
        config = node_config(directory / "i0", key, sim.token_url, url, lease=4.0, rpm=600)
        with config.open("a") as f:  # each round's refresh is asked for (the admin's way)
            f.write('[refresh]\non_demand_cooldown = "1s"\n')
        async with daemon_at(config, clock) as (daemon, http):
            rig = Rig(cluster, database, daemon, http, sim, clock)
            for n in range(rounds):
                mode = rng.choice(modes)
                tally.rounds[mode] += 1
                victim, hold = rng.choice(HUMANS), rng.uniform(1.0, 4.0)
                tally.problems += await one_round(rig, n, mode, victim, hold)
    tally.refreshes = sum(sim.stats.refreshes.values())
    if sim.stats.spent_presented or sim.stats.reuse_events or sim.stats.families_revoked:
        tally.problems.append(f"a spent refresh token was presented: {sim.stats.reuse_events}")
    lost = [human for human in HUMANS if not sim.has_active_grant(human)]
    if lost:
        tally.problems.append(f"grants lost at the server: {lost}")
    return tally
