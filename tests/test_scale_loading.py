"""Loading every grant of a large SQLite store: a chunk of rows at a time, in a worker
thread, with the same grants, order and quarantine as one read would give.

Real SQLite files; the chunk is made small so that a few hundred rows span many chunks.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import closing
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest
from factories import T0, make_grant

from haasd.crypto import Key, Sealer
from haasd.grants import State
from haasd.store import Store
from haasd.store import _store as store_module
from haasd.store._grants import UNREADABLE
from haasd.store._reading import Loaded

CHUNK = 7
HUMANS = [f"usr_{i:04d}" for i in range(5 * CHUNK + 3)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


@pytest.fixture(autouse=True)
def small_chunks(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(store_module, "LOAD_CHUNK", CHUNK)


async def filled(path: Path, sealer: Sealer) -> dict[str, str]:
    """A store of every HUMANS' grant (put in shuffled order); their access tokens."""
    grants = [make_grant(h, last_served_at=T0) for h in reversed(HUMANS)]
    async with await Store.open(path, sealer) as store:
        await store.put_grants(grants)
    return {g.human_id: g.access_token.reveal() for g in grants}


def widen_scope(path: Path, human_id: str) -> None:
    """Edit a row as someone without the key would: its bound scope no longer matches."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE grants SET scope = 'admin:all' WHERE human_id = ?", (human_id,))


async def test_every_grant_loads_across_chunks_in_human_id_order(tmp_path: Path) -> None:
    sealer = Sealer(Key.generate())
    tokens = await filled(tmp_path / "g.db", sealer)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        grants = await store.list_grants()
    assert [g.human_id for g in grants] == HUMANS
    assert {g.human_id: g.access_token.reveal() for g in grants} == tokens
    assert store.unreadable == frozenset()
    # one tuple per distinct scope, shared by every grant across the chunks
    assert len({id(g.scope) for g in grants}) == 1


async def test_an_unreadable_row_in_a_later_chunk_is_quarantined_alone(tmp_path: Path) -> None:
    sealer = Sealer(Key.generate())
    tokens = await filled(tmp_path / "g.db", sealer)
    bad = HUMANS[3 * CHUNK + 2]  # in the fourth chunk
    widen_scope(tmp_path / "g.db", bad)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        grants = await store.list_grants()
        assert store.unreadable == frozenset({bad})
    assert [g.human_id for g in grants] == HUMANS
    by_id = {g.human_id: g for g in grants}
    stand_in = by_id.pop(bad)
    assert stand_in.state is State.NEEDS_RECONSENT
    assert stand_in.last_error is not None and stand_in.last_error.startswith(UNREADABLE)
    assert "access_token" in stand_in.last_error
    assert {h: g.access_token.reveal() for h, g in by_id.items()} == {
        h: t for h, t in tokens.items() if h != bad
    }


async def test_served_times_not_yet_written_win_in_every_chunk(tmp_path: Path) -> None:
    sealer = Sealer(Key.generate())
    await filled(tmp_path / "g.db", sealer)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        late = HUMANS[-1]  # the last chunk
        store.mark_served(late, T0 + 500)
        grants = {g.human_id: g for g in await store.list_grants()}
    assert grants[late].last_served_at == T0 + 500
    assert grants[HUMANS[0]].last_served_at == T0


async def test_the_rows_are_read_a_chunk_at_a_time(tmp_path: Path) -> None:
    """Never more than a chunk of rows in memory: each is handed over, converted, and let
    go before the next is read."""
    sealer = Sealer(Key.generate())
    await filled(tmp_path / "g.db", sealer)
    sizes: list[int] = []
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        db = store._db  # noqa: SLF001 - the store's one connection, as list_grants reads it
        async with db.lock:
            await db.fetch_chunks_locked(
                "SELECT human_id FROM grants", lambda rows: sizes.append(len(rows)), CHUNK
            )
    assert sizes == [CHUNK] * 5 + [3]


async def test_the_rows_are_opened_off_the_event_loop_while_a_store_loads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rows are converted — their tokens opened — in a worker thread, so a task on the
    loop keeps running while a store loads (how long it may be held up is measured in
    bench/scale.py, not asserted here: this machine is shared and noisy)."""
    sealer = Sealer(Key.generate())
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        await store.put_grants([make_grant(f"usr_{i:05d}") for i in range(3000)])
    threads: list[int] = []
    take = Loaded.take

    def watched(self: Loaded, rows: Any) -> None:  # the real conversion, its thread noted
        threads.append(threading.get_ident())
        take(self, rows)

    monkeypatch.setattr(Loaded, "take", watched)
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await anyio.lowlevel.checkpoint()
            ticks += 1

    store = await Store.open(tmp_path / "g.db", sealer)
    async with store, anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        grants = await store.list_grants()
        tg.cancel_scope.cancel()
    assert len(grants) == 3000 and threads
    assert threading.get_ident() not in threads, "never converted on the event loop"
    assert ticks > 0
