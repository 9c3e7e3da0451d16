"""PostgreSQL goes away while a haasd on it is refreshing: stopped (a fast shutdown) for
a few seconds, or refusing every new connection because all its slots are taken
(``max_connections``, SQLSTATE 53300) and haasd's own connections were ended.

The refresh in flight meets the outage between the server's answer and its write: the
rotated token exists only in memory and is written once the database takes connections
again, so no rotation is lost. Meanwhile health is degraded naming the store, the tokens
in hand are served, and no other refresh is sent. tests/test_cluster.py and
tests/test_cluster_faults.py cover a killed and a restarted server; this covers a
stopped one and a full one, on a throwaway cluster of eight slots
(tests/pg_outage_campaign.py; the long run is bench/pg_outages.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pg_cluster import PgCluster, PgDatabase
from pg_cluster import unavailable as pg_unavailable
from pg_outage_campaign import SLOTS, campaign

SEED = 20261203


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


@pytest.mark.slow
@pytest.mark.timeout(90)
@pytest.mark.parametrize("outage", ["stopped", "refusing connections"])
async def test_a_database_outage_mid_refresh_loses_no_rotation(
    short_dir: Path, small_cluster: PgCluster, small_database: PgDatabase, outage: str
) -> None:
    tally = await campaign(short_dir, small_cluster, small_database, 1, SEED, modes=(outage,))
    assert tally.problems == []
    assert tally.rounds == {outage: 1}
    assert tally.refreshes >= 1, "the answer met by the outage, at least"
