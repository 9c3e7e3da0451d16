"""The grant store's promises, tested the same way against every backend.

The refresh engine and the consent flow rely on these, whatever holds the grants: a
refresh intent written before a refresh token is spent and a result that lands only on
the grant it was meant for; pending consents taken once; a write that either happens
whole or not at all, across a crash; unreadable records quarantined, never served.
Each test runs once per backend of tests/conformance_backends.py, on real storage.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import anyio
import pytest
from conformance_backends import BACKENDS, Backend
from factories import T0, make_grant

from haasd.errors import NeedsReconsentError, UnknownHumanError
from haasd.grantpack import Sealed
from haasd.grants import Grant, RefreshIntent, State
from haasd.grantstore import GrantStore
from haasd.secret import Secret
from haasd.store import PendingRecord

CHILD = Path(__file__).with_name("conformance_child.py")
INTENT = RefreshIntent("attempt-1", "fp-1", T0 + 60)


@pytest.fixture(params=sorted(BACKENDS))
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    return BACKENDS[request.param](tmp_path, request)


@asynccontextmanager
async def opened(backend: Backend) -> AsyncIterator[GrantStore]:
    """A store on ``backend``'s storage, closed on exit, as a daemon's run would."""
    store = await backend.open()
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[GrantStore]:
    async with opened(backend) as store:
        yield store


def refreshed(human_id: str, **changes: object) -> Grant:
    """The grant a successful refresh of ``human_id`` would store: new tokens."""
    return make_grant(human_id, last_refresh_at=T0 + 60, **changes)


def pending(state_id: str, *, expires_at: float = T0 + 600) -> PendingRecord:
    return PendingRecord(state_id, ("tasks:dispatch",), None, "http://127.0.0.1/cb", T0, expires_at)


async def in_child(backend: Backend, what: str, *humans: str) -> str:
    """Run tests/conformance_child.py against ``backend``; its output (it always dies)."""
    result = await anyio.run_process(
        [sys.executable, str(CHILD), what, *humans],
        env={**os.environ, **backend.child_env()},
        check=False,
    )
    assert result.returncode == 137, result.stderr.decode()
    return result.stdout.decode()


# -- grants: put, get, list, delete ----------------------------------------------------


async def test_grants_are_listed_in_human_order_and_read_back_whole(store: GrantStore) -> None:
    grants = [make_grant(h) for h in ("usr_c", "usr_a", "usr_b")]
    await store.put_grants(grants)
    assert await store.list_grants() == sorted(grants, key=lambda g: g.human_id)
    assert await store.get_grant("usr_b") == grants[2]


async def test_a_put_replaces_the_grant_of_the_same_human(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    newer = make_grant("usr_a", consented_at=T0 + 5)
    await store.put_grant(newer)
    assert await store.list_grants() == [newer]


async def test_delete_forgets_a_grant_and_says_whether_there_was_one(store: GrantStore) -> None:
    await store.put_grants([make_grant("usr_a"), make_grant("usr_b")])
    assert await store.delete_grant("usr_a") is True
    assert await store.delete_grant("usr_a") is False
    assert [g.human_id for g in await store.list_grants()] == ["usr_b"]
    with pytest.raises(UnknownHumanError):
        await store.get_grant("usr_a")


async def test_writes_to_an_unknown_human_are_refused(store: GrantStore) -> None:
    with pytest.raises(UnknownHumanError):
        await store.begin_refresh("usr_nobody", INTENT)
    with pytest.raises(UnknownHumanError):
        await store.update_status(
            "usr_nobody", state=State.ACTIVE, last_error=None, consecutive_failures=0,
            next_refresh_at=None,
        )  # fmt: skip
    assert await store.list_grants() == []


# -- a refresh: intent, then a result conditional on it --------------------------------


async def test_an_intent_is_recorded_then_cleared_by_its_result(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    await store.begin_refresh("usr_a", INTENT)
    assert (await store.get_grant("usr_a")).intent == INTENT
    new = refreshed("usr_a")
    assert await store.finish_refresh(new, attempt_id=INTENT.attempt_id) is True
    stored = await store.get_grant("usr_a")
    assert stored.intent is None
    assert stored.refresh_token == new.refresh_token


async def test_a_result_for_a_replaced_grant_is_not_written(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    await store.begin_refresh("usr_a", INTENT)
    consent = make_grant("usr_a", consented_at=T0 + 30)  # a re-consent while in flight
    await store.put_grant(consent)
    assert await store.finish_refresh(refreshed("usr_a"), attempt_id=INTENT.attempt_id) is False
    assert await store.get_grant("usr_a") == consent


async def test_a_result_for_a_deleted_grant_does_not_bring_it_back(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    await store.begin_refresh("usr_a", INTENT)
    await store.delete_grant("usr_a")
    assert await store.finish_refresh(refreshed("usr_a"), attempt_id=INTENT.attempt_id) is False
    assert await store.list_grants() == []


async def test_a_result_of_an_overtaken_attempt_is_not_written(
    store: GrantStore,
) -> None:
    await store.put_grant(make_grant("usr_a"))
    await store.begin_refresh("usr_a", INTENT)
    later = RefreshIntent("attempt-2", "fp-1", T0 + 90)
    await store.begin_refresh("usr_a", later)
    assert await store.finish_refresh(refreshed("usr_a"), attempt_id="attempt-1") is False
    assert (await store.get_grant("usr_a")).intent == later
    assert await store.finish_refresh(refreshed("usr_a"), attempt_id="attempt-2") is True


async def test_a_status_change_keeps_the_intent_unless_told_to_clear_it(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    await store.begin_refresh("usr_a", INTENT)
    await store.update_status(
        "usr_a", state=State.ACTIVE, last_error="HaaS answered 503", consecutive_failures=1,
        next_refresh_at=T0 + 90,
    )  # fmt: skip
    kept = await store.get_grant("usr_a")
    assert (kept.intent, kept.last_error, kept.next_refresh_at) == (
        INTENT,
        "HaaS answered 503",
        T0 + 90,
    )
    await store.update_status(
        "usr_a", state=State.NEEDS_RECONSENT, last_error="refresh_token_expired",
        consecutive_failures=1, next_refresh_at=None, clear_intent=True,
    )  # fmt: skip
    cleared = await store.get_grant("usr_a")
    assert (cleared.intent, cleared.state) == (None, State.NEEDS_RECONSENT)
    assert cleared.refresh_token == kept.refresh_token  # the tokens are kept, still readable


# -- crash recovery --------------------------------------------------------------------


async def test_an_intent_left_open_by_a_crash_is_there_after_a_restart(backend: Backend) -> None:
    async with opened(backend) as store:
        await store.put_grant(make_grant("usr_a"))
    assert "the write returned" in await in_child(backend, "intent", "usr_a")
    async with opened(backend) as store:
        intent = (await store.get_grant("usr_a")).intent
    assert intent is not None
    assert intent.attempt_id == "attempt-crashed"


async def test_a_write_cut_mid_way_by_a_crash_leaves_the_old_state(backend: Backend) -> None:
    before = [make_grant(h) for h in ("usr_a", "usr_b", "usr_c")]
    async with opened(backend) as store:
        await store.put_grants(before)
    output = await in_child(backend, "mid-write", "usr_a", "usr_b", "usr_d")
    assert "the write returned" not in output, "the child died inside the write"
    async with opened(backend) as store:
        assert await store.list_grants() == before
        await store.put_grant(make_grant("usr_d"))  # and the storage takes writes again
        assert len(await store.list_grants()) == 4


# -- served times ----------------------------------------------------------------------


async def test_served_times_are_flushed_and_read_back_after_a_restart(backend: Backend) -> None:
    async with opened(backend) as store:
        await store.put_grants([make_grant("usr_a"), make_grant("usr_b")])
        store.mark_served("usr_a", T0 + 10)
        store.mark_served("usr_a", T0 + 5)  # an earlier time never moves it back
        assert store.served_at("usr_a") == T0 + 10  # known before a flush
        assert store.served_at("usr_b") is None
        assert await store.flush_served() == 1
        assert await store.flush_served() == 0
        store.mark_served("usr_b", T0 + 20)  # written by the close
    async with opened(backend) as store:
        a, b = await store.list_grants()
        store.mark_served("usr_a", T0 + 1)
        await store.flush_served()
        assert (await store.get_grant("usr_a")).last_served_at == T0 + 10
    assert (a.last_served_at, b.last_served_at) == (T0 + 10, T0 + 20)


async def test_a_served_time_of_a_deleted_grant_is_dropped(store: GrantStore) -> None:
    await store.put_grant(make_grant("usr_a"))
    store.mark_served("usr_a", T0 + 10)
    await store.delete_grant("usr_a")
    await store.flush_served()
    assert await store.list_grants() == []
    assert store.served_at("usr_a") is None


# -- pending consents ------------------------------------------------------------------


async def test_a_pending_consent_is_taken_once(store: GrantStore) -> None:
    record, verifier = pending("s1"), Secret("verifier-one")
    assert await store.add_pending(record, verifier, limit=10) is True
    assert await store.get_pending("s1") == record
    taken = await store.take_pending("s1")
    assert taken is not None
    assert taken[0] == record
    assert taken[1].reveal() == "verifier-one"
    assert await store.take_pending("s1") is None
    assert await store.list_pending() == []


async def test_of_concurrent_takes_exactly_one_wins(backend: Backend) -> None:
    async with opened(backend) as first, opened(backend) as second:
        for n in range(5):
            await first.add_pending(pending(f"s{n}"), Secret(f"v{n}"), limit=10)
        wins: list[str] = []

        async def take(store: GrantStore, state_id: str) -> None:
            if await store.take_pending(state_id) is not None:
                wins.append(state_id)

        async with anyio.create_task_group() as tg:
            for n in range(5):
                for store in (first, second, first, second):
                    tg.start_soon(take, store, f"s{n}")
    assert sorted(wins) == [f"s{n}" for n in range(5)]


async def test_pending_consents_beyond_the_limit_are_refused(backend: Backend) -> None:
    async with opened(backend) as first, opened(backend) as second:
        added: list[bool] = []

        async def add(store: GrantStore, n: int) -> None:
            added.append(await store.add_pending(pending(f"s{n}"), Secret("v"), limit=3))

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(add, (first, second)[n % 2], n)
        assert added.count(True) == 3
        assert len(await first.list_pending()) == 3
        taken = (await first.list_pending())[0].state_id
        assert await second.take_pending(taken) is not None
        assert await first.add_pending(pending("s_new"), Secret("v"), limit=3) is True


async def test_a_taken_consent_put_back_can_be_taken_again(store: GrantStore) -> None:
    await store.add_pending(pending("s1"), Secret("v1"), limit=1)
    taken = await store.take_pending("s1")
    assert taken is not None
    await store.restore_pending(*taken)
    await store.restore_pending(*taken)  # twice is once
    assert await store.list_pending() == [taken[0]]
    again = await store.take_pending("s1")
    assert again is not None
    assert again[1].reveal() == "v1"


async def test_expired_pending_consents_are_taken_in_expiry_order(store: GrantStore) -> None:
    for state_id, expires in (("late", T0 + 900), ("b", T0 + 200), ("a", T0 + 100)):
        await store.add_pending(pending(state_id, expires_at=expires), Secret("v"), limit=10)
    assert await store.next_pending_expiry() == T0 + 100
    expired = await store.take_expired_pending(T0 + 200)
    assert [r.state_id for r in expired] == ["a", "b"]
    assert [r.state_id for r in await store.list_pending()] == ["late"]
    assert await store.take_expired_pending(T0 + 200) == []


# -- unreadable records ----------------------------------------------------------------


async def test_an_unreadable_grant_is_quarantined_and_the_others_load(backend: Backend) -> None:
    grants = [make_grant(h) for h in ("usr_a", "usr_b", "usr_c")]
    async with opened(backend) as store:
        await store.put_grants(grants)
    backend.spoil("usr_b")
    async with opened(backend) as store:
        a, b, c = await store.list_grants()
        assert (a, c) == (grants[0], grants[2])
        assert store.unreadable == {"usr_b"}
        assert b.state is State.NEEDS_RECONSENT
        assert b.last_error is not None
        assert b.last_error.startswith("store row unreadable")
        assert not b.access_token.reveal()
        assert await store.get_grant("usr_b") == b


async def test_no_refresh_writes_a_quarantined_grant(backend: Backend) -> None:
    async with opened(backend) as store:
        await store.put_grant(make_grant("usr_b"))
    backend.spoil("usr_b")
    async with opened(backend) as store:
        stand_in = await store.get_grant("usr_b")
        with pytest.raises(NeedsReconsentError):
            await store.begin_refresh("usr_b", INTENT)
        assert await store.finish_refresh(refreshed("usr_b")) is False
        await store.put_grant(replace(stand_in, last_error="kept"))  # a stand-in: ignored
        assert await store.get_grant("usr_b") == stand_in
        consent = make_grant("usr_b", consented_at=T0 + 60)
        await store.put_grant(consent)  # a re-consent ends the quarantine
        assert store.unreadable == frozenset()
        assert await store.get_grant("usr_b") == consent


async def test_a_peek_reads_one_grant_as_stored_and_notes_nothing(backend: Backend) -> None:
    grants = [make_grant(h) for h in ("usr_a", "usr_b", "usr_c")]
    async with opened(backend) as store:
        await store.put_grants(grants)
        assert await store.peek_grant("usr_c") == grants[2]
        assert await store.peek_grant("usr_gone") is None
    backend.spoil("usr_b")
    async with opened(backend) as store:
        assert await store.peek_grant("usr_b") is None  # never served, and not judged here:
        assert store.unreadable == frozenset()  # the read of every grant quarantines it
        assert await store.peek_grant("usr_a") == grants[0]


async def test_a_peek_is_answered_while_every_grant_is_being_read(store: GrantStore) -> None:
    """What the daemon serves from while it loads: the read of every grant holds the
    store, and a peek must not wait for it to end."""
    grants = [make_grant(h) for h in ("usr_a", "usr_b", "usr_c")]
    await store.put_grants(grants)
    taking, peeked = threading.Event(), threading.Event()
    seen: list[str] = []

    def take(chunk: list[Grant | Sealed]) -> None:  # the store's worker thread
        taking.set()
        assert peeked.wait(10), "the peek waited for the read of every grant"
        seen.extend(item.human_id for item in chunk)

    async with anyio.create_task_group() as tg:
        tg.start_soon(store.read_grants, take)
        assert await anyio.to_thread.run_sync(taking.wait, 10)
        with anyio.fail_after(5):
            assert await store.peek_grant("usr_b") == grants[1]
        peeked.set()
    assert seen == ["usr_a", "usr_b", "usr_c"]


async def test_several_grants_are_read_at_once_and_a_missing_one_is_left_out(
    store: GrantStore,
) -> None:
    await store.put_grants([make_grant("usr_a"), make_grant("usr_b"), make_grant("usr_c")])
    read = await store.get_grants(["usr_c", "usr_a", "usr_gone"])
    assert sorted(g.human_id for g in read) == ["usr_a", "usr_c"]
    assert {g.human_id: g for g in read}["usr_a"] == await store.get_grant("usr_a")
    assert await store.get_grants([]) == []
