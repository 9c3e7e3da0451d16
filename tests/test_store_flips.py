"""Flipped bits in the store file: a refusal naming the file, or the humans touched
quarantined, or nothing served changed — never a traceback, never another token. A short
campaign (tests/flip_campaign.py; the long one is bench/store_flips.py) and the cases it
found, each kept as a regression test."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

import pytest
from flip_campaign import HUMANS, REGIONS, campaign, seed_store

from haasd.crypto import Key, Sealer
from haasd.errors import StoreCorruptError
from haasd.store import Store

FLIPS = 200
SEED = 20261203


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # aiosqlite hands results back through asyncio futures


async def test_flipped_bits_are_refused_or_quarantined_never_served(tmp_path: Path) -> None:
    tally = await campaign(tmp_path, FLIPS, SEED)
    assert tally.failures == []
    assert tally.trials == FLIPS
    outcomes = tally.outcomes
    # a flip in a sealed value never leaves it readable: its human is quarantined, or
    # (the store's key check) the file is refused
    assert outcomes[("token", "intact")] == 0
    assert outcomes[("token", "quarantined")] > 0
    assert outcomes[("text", "quarantined")] > 0  # a human id or a scope: bound
    assert outcomes[("header", "refused")] > 0
    assert {region for region, _ in outcomes} == set(REGIONS)


async def pristine(tmp_path: Path) -> tuple[Path, Key]:
    key = Key.generate()
    db = tmp_path / "haasd.db"
    await seed_store(db, key)
    return db, key


def patch(db: Path, find: bytes, offset: int, value: int) -> None:
    data = bytearray(db.read_bytes())
    data[data.index(find) + offset] = value
    db.write_bytes(bytes(data))


async def test_a_schema_damaged_into_bytes_that_are_not_text_is_refused(tmp_path: Path) -> None:
    """SQLite's error then quotes bytes that are not UTF-8: sqlite3 raised a
    UnicodeDecodeError, which escaped as a traceback."""
    db, key = await pristine(tmp_path)
    patch(db, b"CREATE TABLE grants", 7, 0xA9)  # near "\xa9ABLE": a syntax error
    with pytest.raises(StoreCorruptError, match=f"store {db}: .*not a usable haasd store"):
        await Store.open(db, Sealer(key))


async def test_a_damaged_key_check_is_not_called_a_wrong_key(tmp_path: Path) -> None:
    db, key = await pristine(tmp_path)
    with closing(sqlite3.connect(db)) as conn:
        (blob,) = conn.execute("SELECT value FROM meta WHERE name = 'key_check'").fetchone()
    patch(db, blob, len(blob) - 3, blob[-3] ^ 0x10)
    with pytest.raises(StoreCorruptError, match=f"store {db} is damaged: its key-check value"):
        await Store.open(db, Sealer(key))


async def test_a_header_that_makes_sqlite_read_only_is_called_damaged(tmp_path: Path) -> None:
    db, key = await pristine(tmp_path)
    patch(db, b"SQLite format 3\0", 18, 17)  # the file format SQLite writes: 1 or 2
    with pytest.raises(StoreCorruptError, match="header says file format 17"):
        await Store.open(db, Sealer(key))


async def test_a_schema_version_whose_top_bit_flipped_is_called_damaged(tmp_path: Path) -> None:
    """SQLite reads the header's user_version signed: a flipped top bit made it negative,
    and the migrations from there raised an IndexError (a traceback; a version of -1
    would have run the last migration again)."""
    db, key = await pristine(tmp_path)
    patch(db, b"SQLite format 3\0", 60, 0x80)  # user_version: 4 bytes at 60, big-endian
    with pytest.raises(StoreCorruptError, match=r"damaged: schema version -\d+"):
        await Store.open(db, Sealer(key))


async def test_the_pristine_store_of_the_campaign_opens_whole(tmp_path: Path) -> None:
    db, key = await pristine(tmp_path)
    async with await Store.open(db, Sealer(key)) as store:
        assert [g.human_id for g in await store.list_grants()] == sorted(HUMANS)
        assert store.unreadable == frozenset()
