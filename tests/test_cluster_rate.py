"""One rate budget for the cluster: instances on one PostgreSQL store spend the plan's
budget together (haasd.pgstore.PgRate behind haasd.ratelimit.RateBudget), on a real
throwaway database (tests/pg_cluster.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
import pytest
from pg_cluster import PgCluster, PgDatabase

from haasd.clock import SystemClock
from haasd.crypto import Key, Sealer
from haasd.demand import OnDemand, RefusalReason
from haasd.errors import TransientAuthError
from haasd.pgstore import PgRate, PgStore
from haasd.ratelimit import RateBudget

RPM = 20  # capacity 18 with the 0.9 safety


@asynccontextmanager
async def budgets(url: str, count: int, members: int = 1) -> AsyncIterator[list[RateBudget]]:
    """``count`` instances' budgets, each on a store (pool) of its own on one database."""
    key = Key.generate()
    async with AsyncExitStack() as stack:
        made = []
        for _ in range(count):
            store = await stack.enter_async_context(await PgStore.open(url, Sealer(key)))
            rate = PgRate(store.database, members=lambda: members)
            made.append(RateBudget(RPM, SystemClock(), shared=rate))
        yield made


async def spend_for(budget: RateBudget, seconds: float) -> int:
    """How many requests ``budget`` could send within ``seconds``."""
    spent = 0
    with anyio.move_on_after(seconds):
        while True:
            await budget.acquire()
            spent += 1
    return spent


async def test_instances_together_never_exceed_the_plans_capacity(
    pg_database: PgDatabase,
) -> None:
    async with budgets(pg_database.socket_url, 3) as three:
        counts = [0, 0, 0]

        async def spend(n: int) -> None:
            counts[n] = await spend_for(three[n], 2.0)

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(spend, n)
        assert sum(counts) == three[0].capacity == 18, counts
        assert three[0].ready_in() == 0.0  # the local window alone is not exhausted
        assert min(counts) >= 1, "every instance got some of it"


async def test_a_retry_after_one_instance_heard_holds_the_others(
    pg_database: PgDatabase,
) -> None:
    async with budgets(pg_database.socket_url, 2) as (a, b):
        a.block_for(30)  # a 429's Retry-After, heard by a
        assert b.blocked_until is None
        shared_b = b._shared  # noqa: SLF001 - the test reads what b learnt
        assert isinstance(shared_b, PgRate)
        shared_a = a._shared  # noqa: SLF001
        assert isinstance(shared_a, PgRate)
        await shared_a.sync()  # what the background loop does every second
        await shared_b.sync()
        assert b.blocked_until is not None
        assert 25 < b.ready_in() <= 30
        assert await spend_for(b, 1.0) == 0, "b sends nothing while the server said wait"


async def test_the_on_demand_share_is_this_instances_part_of_the_cluster(
    pg_database: PgDatabase,
) -> None:
    async with budgets(pg_database.socket_url, 1, members=3) as (budget,):
        assert budget.capacity == 18 and budget.instance_capacity == 6
        demand = OnDemand()
        capacity = budget.instance_capacity
        admitted = [
            demand.admit(f"usr_{n}", n, float(n), capacity=capacity, share=0.5, cooldown=300)
            for n in range(5)
        ]
        assert admitted[:3] == [None] * 3  # half of this instance's 6 per minute
        assert admitted[3] is not None and admitted[3].reason is RefusalReason.SHARE


async def test_a_refresh_elsewhere_starts_the_cooldown_here() -> None:
    demand = OnDemand()
    demand.refreshed_elsewhere("usr_a", 100.0)
    refusal = demand.admit("usr_a", 1, 150.0, capacity=100, share=0.5, cooldown=300)
    assert refusal is not None and refusal.reason is RefusalReason.COOLDOWN
    assert "another instance" in refusal.message and refusal.retry_after == 250.0
    assert demand.admit("usr_a", 1, 401.0, capacity=100, share=0.5, cooldown=300) is None


async def test_without_the_database_nothing_is_sent_and_the_error_says_why(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with budgets(pg_database.socket_url, 1) as (budget,):
        await budget.acquire()
        pg_cluster.stop()
        with pytest.raises(TransientAuthError) as failed:
            await budget.acquire()
        assert not failed.value.sent
        assert "rate budget cannot be read" in str(failed.value)
        pg_cluster.start()
