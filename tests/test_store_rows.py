"""Rows read back as the grants written, whichever way they are checked: the usual row
(no intent, no failure, every time a float) in one test of all its columns, any other
column by column. Real SQLite files; the same rows come back from PostgreSQL through the
conformance suite."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import fields, replace
from pathlib import Path

import pytest
from factories import T0, make_grant

from haasd.crypto import Key, Sealer
from haasd.grants import Grant, RefreshIntent, State
from haasd.store import Store
from haasd.store._grants import UNREADABLE

GRANTS = [
    make_grant("usr_usual", last_refresh_at=T0, next_refresh_at=T0 + 2700, last_served_at=T0),
    make_grant("usr_new"),  # never refreshed, served or scheduled: None times
    make_grant("usr_due", state=State.RECONSENT_DUE, scope=()),
    make_grant("usr_failing", consecutive_failures=3, last_error="server_error: 503"),
    make_grant("usr_dead", state=State.NEEDS_RECONSENT, last_error="invalid_grant"),
    make_grant("usr_flying", intent=RefreshIntent("a1", "0123456789ab", T0 + 5)),
]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_every_kind_of_row_reads_back_as_the_grant_written(tmp_path: Path) -> None:
    async with await Store.open(tmp_path / "s.db", Sealer(Key.generate())) as store:
        await store.put_grants(GRANTS)
        listed = await store.list_grants()
        one = await store.get_grant("usr_usual")
    assert listed == sorted(GRANTS, key=lambda g: g.human_id)
    for got, written in zip(listed, sorted(GRANTS, key=lambda g: g.human_id), strict=True):
        for field in fields(Grant):
            assert getattr(got, field.name) == getattr(written, field.name), field.name
        assert type(got.state) is State and hash(got) == hash(written)
    assert one == GRANTS[0] and "haas_at_" not in repr(one)
    assert replace(one, state=State.RECONSENT_DUE).state is State.RECONSENT_DUE


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("consented_at", "'yesterday'", "consented_at is not a number"),
        ("last_served_at", "'noon'", "last_served_at is not a number"),
        ("consecutive_failures", "-1", "consecutive_failures is not a count"),
        ("environment", "x'00'", "environment is not text"),
    ],
)
async def test_a_column_the_schema_never_writes_quarantines_its_row(
    tmp_path: Path, column: str, value: str, reason: str
) -> None:
    path, sealer = tmp_path / "s.db", Sealer(Key.generate())
    async with await Store.open(path, sealer) as store:
        await store.put_grants(GRANTS[:2])
    with closing(sqlite3.connect(path)) as conn, conn:
        sql = f"UPDATE grants SET {column} = {value} WHERE human_id = 'usr_usual'"  # noqa: S608 - the test's own values
        conn.execute(sql)
    async with await Store.open(path, sealer) as store:
        new, usual = await store.list_grants()  # in human id order
        assert store.unreadable == frozenset({"usr_usual"})
    assert usual.state is State.NEEDS_RECONSENT and not usual.access_token
    assert usual.last_error is not None and usual.last_error.startswith(UNREADABLE)
    assert reason in usual.last_error
    assert new == GRANTS[1]
