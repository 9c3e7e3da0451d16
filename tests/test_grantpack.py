"""The engine's grants in memory (haasd.grantpack): packed grants read back exactly as
they were put, unusual ones are kept as they are, and rows loaded with their tokens
sealed open — or are quarantined — exactly as the store would open them.

Real SQLite files and the store's own opener for the sealed rows.
"""

from __future__ import annotations

import math
import sqlite3
from contextlib import closing
from dataclasses import replace
from pathlib import Path

import pytest
from factories import T0, make_grant
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from haasd.crypto import Key, Sealer
from haasd.grantpack import GrantTable, Sealed, times_of
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret
from haasd.store import Store
from haasd.store._grants import UNREADABLE

HUMANS = [f"usr_{i:03d}" for i in range(40)]

times = st.floats(min_value=0.0, max_value=4e9, allow_nan=False)
maybe_times = st.none() | times
tokens = st.text(min_size=1, max_size=80)
scopes = st.lists(st.sampled_from(["tasks:dispatch", "status:read", "a", "ü:x"]), max_size=3)


@st.composite
def grants(draw: st.DrawFn) -> Grant:
    return Grant(
        human_id=draw(st.sampled_from(HUMANS)),
        environment=draw(st.sampled_from(["test", "live", "staging"])),
        scope=tuple(draw(scopes)),
        access_token=Secret(draw(tokens)),
        access_expires_at=draw(times),
        refresh_token=Secret(draw(tokens)),
        refresh_expires_at=draw(times),
        consented_at=draw(times),
        last_refresh_at=draw(maybe_times),
        state=draw(st.sampled_from(list(State))),
        next_refresh_at=draw(maybe_times),
        last_served_at=draw(maybe_times),
    )


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(grants(), min_size=1, max_size=30))
def test_every_grant_put_reads_back_as_it_was_put(put: list[Grant]) -> None:
    table = GrantTable()
    latest: dict[str, Grant] = {}
    for grant in put:
        table[grant.human_id] = grant
        latest[grant.human_id] = grant
    assert len(table) == len(latest)
    for human_id, grant in latest.items():
        got = table.get(human_id)
        assert got == grant
        assert got.access_token.reveal() == grant.access_token.reveal()
    assert {g.human_id: g for g in table.values()} == latest
    assert {t.human_id: t for t in table.times()} == {h: times_of(g) for h, g in latest.items()}


@pytest.mark.parametrize(
    "unusual",
    [
        {"last_error": "the server said no"},
        {"consecutive_failures": 2},
        {"intent": RefreshIntent("a1", "0123456789ab", T0)},
        {"next_refresh_at": math.nan},
    ],
    ids=["error", "failures", "intent", "nan"],
)
def test_a_grant_of_an_unusual_shape_is_kept_as_it_is(unusual: dict[str, object]) -> None:
    grant = replace(make_grant("usr_a"), **unusual)  # type: ignore[arg-type]
    table = GrantTable()
    table["usr_a"] = grant
    assert table.get("usr_a") is grant
    assert table.packed == 0
    table["usr_a"] = make_grant("usr_a")
    assert table.packed == 1


def test_the_table_never_shows_a_token() -> None:
    table = GrantTable()
    grant = make_grant("usr_a")
    table["usr_a"] = grant
    shown = repr(table) + str(table) + repr(list(table.times()))
    assert grant.access_token.reveal() not in shown
    assert grant.refresh_token.reveal() not in shown


def test_pop_and_membership_behave_as_a_dict_does() -> None:
    table = GrantTable()
    grant = make_grant("usr_a")
    table["usr_a"] = grant
    assert "usr_a" in table and list(table) == ["usr_a"]
    assert table.pop("usr_a") == grant
    assert table.pop("usr_a") is None and "usr_a" not in table
    with pytest.raises(KeyError):
        table["usr_a"]


# --- rows loaded sealed -------------------------------------------------------------------


async def filled(path: Path, sealer: Sealer) -> dict[str, Grant]:
    grants = [make_grant(h, last_served_at=T0) for h in HUMANS]
    grants[5] = replace(grants[5], last_error="failing", consecutive_failures=1)
    async with await Store.open(path, sealer) as store:
        await store.put_grants(grants)
    return {g.human_id: g for g in grants}


def widen_scope(path: Path, human_id: str) -> None:
    """Edit a row as someone without the key would: its bound scope no longer matches."""
    with closing(sqlite3.connect(path, isolation_level=None)) as conn:
        conn.execute("UPDATE grants SET scope = 'admin:all' WHERE human_id = ?", (human_id,))


async def load(store: Store) -> tuple[GrantTable, int]:
    """A table loaded as the engine loads it; how many rows came sealed."""
    table, sealed = GrantTable(), 0
    table.opener = store.opener

    def take(chunk: list[Grant | Sealed]) -> None:
        nonlocal sealed
        for item in chunk:
            if isinstance(item, Sealed):
                table.put_sealed(item)
                sealed += 1
            else:
                table[item.human_id] = item

    await store.read_grants(take)
    return table, sealed


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


async def test_sealed_rows_open_to_the_grants_the_store_reads(tmp_path: Path) -> None:
    sealer = Sealer(Key.generate())
    await filled(tmp_path / "g.db", sealer)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        store.mark_served(HUMANS[-1], T0 + 500)  # not written yet: it wins
        listed = {g.human_id: g for g in await store.list_grants()}
        table, sealed = await load(store)
    assert sealed == len(HUMANS) - 1  # the failing grant came as a Grant
    assert {t.human_id: t for t in table.times()} == {h: times_of(g) for h, g in listed.items()}
    assert {h: table[h] for h in HUMANS} == listed
    assert table[HUMANS[-1]].last_served_at == T0 + 500


async def test_a_sealed_row_that_does_not_open_is_quarantined_when_opened(
    tmp_path: Path,
) -> None:
    sealer = Sealer(Key.generate())
    put = await filled(tmp_path / "g.db", sealer)
    bad = HUMANS[7]
    widen_scope(tmp_path / "g.db", bad)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        table, _ = await load(store)
        assert store.unreadable == frozenset()  # not opened yet
        while table.open_sealed(8):
            pass
        assert store.unreadable == frozenset({bad})
        stand_in = table[bad]
        assert stand_in.state is State.NEEDS_RECONSENT
        assert stand_in.last_error is not None and stand_in.last_error.startswith(UNREADABLE)
        assert not stand_in.access_token
        others = {h: table[h] for h in HUMANS if h != bad}
    assert others == {h: g for h, g in put.items() if h != bad}
    assert table.packed == len(HUMANS) - 2  # all open now; the stand-in, the failing one


async def test_a_sealed_row_asked_for_first_opens_then_and_once(tmp_path: Path) -> None:
    sealer = Sealer(Key.generate())
    put = await filled(tmp_path / "g.db", sealer)
    async with await Store.open(tmp_path / "g.db", sealer) as store:
        table, _ = await load(store)
        opened: list[str] = []
        opener = store.opener

        class Counting:
            def open_tokens(self, row: Sealed) -> tuple[str, str]:
                opened.append(row.human_id)
                return opener.open_tokens(row)

            def unreadable(self, human_id: str, reason: str) -> Grant:
                return opener.unreadable(human_id, reason)

        table.opener = Counting()
        assert table[HUMANS[0]] == put[HUMANS[0]]
        assert table[HUMANS[0]] == put[HUMANS[0]]
        while table.open_sealed(16):
            pass
    assert opened.count(HUMANS[0]) == 1
    assert sorted(opened) == sorted(h for h in HUMANS if h != HUMANS[5])
