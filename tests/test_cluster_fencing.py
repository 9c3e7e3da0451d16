"""Fencing in a cluster, step by step on a real PostgreSQL store: what a holder that was
paused past its lease can and cannot write when it comes back (tests/pg_cluster.py)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import replace

import pytest
from factories import make_grant
from pg_cluster import PgCluster, PgDatabase

from haasd.crypto import Key, Sealer, fingerprint
from haasd.errors import FencedError
from haasd.grants import Grant, RefreshIntent
from haasd.pgstore import PgCoordination, PgStore
from haasd.secret import Secret

HUMAN = "usr_fenced"


@asynccontextmanager
async def two_instances(url: str) -> AsyncIterator[tuple[PgCoordination, PgCoordination]]:
    key = Key.generate()
    async with AsyncExitStack() as stack:
        made = []
        for name in ("a", "b"):
            store = await stack.enter_async_context(await PgStore.open(url, Sealer(key)))
            made.append(PgCoordination(store, lease=3.0, instance_id=f"host/{name}"))
        yield made[0], made[1]


def store_of(coordination: PgCoordination) -> PgStore:
    store = coordination._store  # noqa: SLF001 - the test drives the store the engine would
    assert isinstance(store, PgStore)
    return store


async def begin(coordination: PgCoordination) -> Grant:
    """What the engine does once it holds the lease: read the grant, write the intent."""
    store = store_of(coordination)
    grant = await store.get_grant(HUMAN)
    intent = RefreshIntent(uuid.uuid4().hex, fingerprint(grant.refresh_token), 0.0)
    await store.begin_refresh(HUMAN, intent)
    return replace(grant, intent=intent)


def rotated(grant: Grant, tag: str) -> Grant:
    return replace(
        grant, access_token=Secret(f"at-{tag}"), refresh_token=Secret(f"rt-{tag}"), intent=None
    )


async def expire_leases(cluster: PgCluster, database: PgDatabase) -> None:
    """As if the holder had been paused past its lease (PostgreSQL's clock moved on)."""
    cluster.psql("UPDATE haasd_leases SET expires_at = now() - interval '1 s'", database.name)


async def test_a_paused_holders_answer_never_overwrites_the_next_holders_token(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with two_instances(pg_database.socket_url) as (a, b):
        await store_of(a).put_grant(make_grant(HUMAN))
        permit_a = await a.acquire(HUMAN)
        assert permit_a is not None and await b.acquire(HUMAN) is None
        mine = await begin(a)  # a sent its request ... and was paused
        await expire_leases(pg_cluster, pg_database)
        assert await b.acquire(HUMAN) is not None, "an ended lease is taken over"
        theirs = await begin(b)
        assert theirs.intent is not None and theirs.intent != mine.intent
        assert theirs.refresh_token == mine.refresh_token  # b retries a's lost answer
        assert await store_of(b).finish_refresh(
            rotated(theirs, "b"), attempt_id=theirs.intent.attempt_id
        )
        assert mine.intent is not None
        late = await store_of(a).finish_refresh(
            rotated(mine, "a"), attempt_id=mine.intent.attempt_id
        )
        assert not late, "a's late answer is dropped"
        kept = await store_of(b).get_grant(HUMAN)
        assert kept.refresh_token.reveal() == "rt-b"


async def test_a_refresh_begins_only_under_a_live_lease_on_the_version_read(
    pg_cluster: PgCluster, pg_database: PgDatabase
) -> None:
    async with two_instances(pg_database.socket_url) as (a, b):
        await store_of(a).put_grant(make_grant(HUMAN))
        with pytest.raises(FencedError):  # no lease at all
            await begin(a)
        assert await a.acquire(HUMAN) is not None
        await store_of(a).get_grant(HUMAN)  # a read version v
        await store_of(b).put_grant(make_grant(HUMAN, access_token=Secret("at-consent")))
        intent = RefreshIntent("x" * 32, "fp", 0.0)
        with pytest.raises(FencedError, match="changed since this instance read it"):
            await store_of(a).begin_refresh(HUMAN, intent)  # still on v: refused
        await begin(a)  # read again: it begins
        await expire_leases(pg_cluster, pg_database)
        with pytest.raises(FencedError):
            await begin(a)


async def test_a_lease_is_trusted_locally_only_until_its_margin(
    pg_database: PgDatabase,
) -> None:
    async with two_instances(pg_database.socket_url) as (a, _):
        await store_of(a).put_grant(make_grant(HUMAN))
        permit = await a.acquire(HUMAN)
        assert permit is not None and a.held(permit)
        a._leases[HUMAN] -= a.lease  # noqa: SLF001 - as if no renewal succeeded since
        assert not a.held(permit), "no request is sent on a lease that may have ended"
        await a.release(permit)
        assert not a.held(permit)
