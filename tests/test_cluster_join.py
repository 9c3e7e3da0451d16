"""An instance joining the cluster while its database restarts: the first heartbeat and
the first LISTEN are tried again for ``store.connect_timeout``, as the first connection
is, instead of ending ``haasd run`` (tests/pg_cluster.py's throwaway cluster)."""

from __future__ import annotations

import time

import anyio
import pytest
from pg_cluster import PgCluster, PgDatabase

from haasd.crypto import Key, Sealer
from haasd.errors import StoreError
from haasd.pgstore import PgCoordination, PgStore


async def test_joining_waits_for_a_database_that_restarts_meanwhile(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with await PgStore.open(pg_database.url, Sealer(Key.generate())) as store:
        coordination = PgCoordination(store, lease=3.0, join_within=60.0)
        await anyio.to_thread.run_sync(pg_cluster.stop)
        began = time.monotonic()
        async with anyio.create_task_group() as tg:

            async def back_later() -> None:
                await anyio.sleep(2.0)
                await anyio.to_thread.run_sync(pg_cluster.start)

            tg.start_soon(back_later)
            with anyio.fail_after(90):
                await tg.start(coordination.run)
            assert time.monotonic() - began >= 2.0, "it joined only once the database was up"
            assert [i.instance_id for i in coordination.instances()] == [coordination.instance_id]
            assert coordination.problem() is None
            tg.cancel_scope.cancel()


async def test_joining_gives_up_once_its_time_has_passed(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with await PgStore.open(pg_database.url, Sealer(Key.generate())) as store:
        coordination = PgCoordination(store, lease=3.0, join_within=1.0)
        await anyio.to_thread.run_sync(pg_cluster.stop)
        with anyio.fail_after(60), pytest.raises(StoreError, match="heartbeat"):
            await coordination.run()
