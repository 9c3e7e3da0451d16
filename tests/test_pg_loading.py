"""Loading every grant of a PostgreSQL store: one snapshot read a chunk at a time through
a server-side cursor, with the same grants, order, versions and quarantine as one read
would give. On a throwaway cluster of the test session's own (tests/pg_cluster.py); the
chunk is made small so that a few dozen rows span many chunks."""

from __future__ import annotations

import pytest
from factories import T0, make_grant
from pg_cluster import PgCluster, PgDatabase

from haasd.crypto import Key, Sealer
from haasd.grants import State
from haasd.pgstore import PgStore
from haasd.pgstore import _store as pgstore_module
from haasd.store._grants import UNREADABLE

CHUNK = 7
HUMANS = [f"usr_{i:04d}" for i in range(5 * CHUNK + 3)]


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pgstore_module, "LOAD_CHUNK", CHUNK)


async def test_every_grant_loads_across_chunks_with_its_version(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    sealer = Sealer(Key.generate())
    grants = {h: make_grant(h, last_served_at=T0) for h in reversed(HUMANS)}
    store = await PgStore.open(pg_database.socket_url, sealer)
    try:
        await store.put_grants(grants.values())
        await store.put_grant(grants[HUMANS[-1]])  # a second write: version 2
        edit = f"UPDATE grants SET scope = 'admin:all' WHERE human_id = '{HUMANS[CHUNK * 3]}'"  # noqa: S608 - the test's own names
        pg_cluster.psql(edit, pg_database.name)  # edited without the key: does not open
        store.mark_served(HUMANS[1], T0 + 60)
        loaded = await store.list_grants(warn=False)
        versions = {h: store.version_of(h) for h in HUMANS}
        unreadable = store.unreadable
    finally:
        await store.close()
    stored = pg_cluster.psql("SELECT human_id, version FROM grants", pg_database.name)
    assert [g.human_id for g in loaded] == HUMANS
    quarantined = HUMANS[CHUNK * 3]
    assert unreadable == frozenset({quarantined})
    for grant in loaded:
        if grant.human_id == quarantined:
            assert grant.state is State.NEEDS_RECONSENT
            assert grant.last_error is not None and grant.last_error.startswith(UNREADABLE)
        elif grant.human_id == HUMANS[1]:
            assert grant.last_served_at == T0 + 60, "a served time not yet written wins"
        else:
            assert grant == grants[grant.human_id]
    assert versions == {h: int(v) for h, v in (line.split("|") for line in stored.split())}
    assert len(set(versions.values())) == len(HUMANS), "each as last written"


async def test_served_times_are_written_a_bounded_statement_at_a_time(
    pg_cluster: PgCluster, pg_database: PgDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pgstore_module, "SERVED_PER_STATEMENT", 3)
    store = await PgStore.open(pg_database.socket_url, Sealer(Key.generate()))
    try:
        await store.put_grants(make_grant(h, last_served_at=T0) for h in HUMANS)
        for i, human in enumerate(HUMANS[:8]):
            store.mark_served(human, T0 + 60 + i)
        assert await store.flush_served() == 8
        assert await store.flush_served() == 0, "each written once"
    finally:
        await store.close()
    stored = pg_cluster.psql("SELECT human_id, last_served_at FROM grants", pg_database.name)
    served = {h: float(at) for h, at in (line.split("|") for line in stored.split())}
    assert served == {h: T0 + 60 + i if i < 8 else T0 for i, h in enumerate(HUMANS)}
