"""Generated damage to the rows of a real SQLite store file — columns set to values of
any type, bits flipped in the sealed tokens, values copied from another human's row —
then the store opened and every grant loaded, as ``haasd run`` does at start: it never
fails, every other human loads as written, and a damaged row either loads with exactly
the tokens, scope, state and expiries that were written for that human (a column that
decides nothing was changed) or is quarantined (``needs_reconsent``, no token, never
served). What SQLite itself refuses (NOT NULL, CHECK, a taken human id) never lands.
"""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from contextlib import closing
from pathlib import Path

import anyio
import pytest
from factories import T0, make_grant
from hostile import profile, texts
from hypothesis import given
from hypothesis import strategies as st

from haasd.crypto import Key, Sealer
from haasd.grants import Grant, RefreshIntent, Serve, State, serve_decision
from haasd.store import Store

HUMANS = ("usr_a", "usr_b", "usr_c")
COLUMNS = (
    *("human_id", "environment", "scope", "access_token", "access_expires_at"),
    *("refresh_token", "refresh_expires_at", "consented_at", "last_refresh_at", "state"),
    *("last_error", "consecutive_failures", "next_refresh_at", "last_served_at"),
    *("intent_attempt_id", "intent_fingerprint", "intent_started_at"),
)
KEY = Key.generate()


async def _write(path: Path) -> dict[str, Grant]:
    grants = [
        make_grant(HUMANS[0]),
        make_grant(HUMANS[1], state=State.RECONSENT_DUE, last_refresh_at=T0, next_refresh_at=T0),
        make_grant(
            HUMANS[2],
            consecutive_failures=2,
            last_error="boom",
            intent=RefreshIntent("attempt-1", "fp", T0),
        ),
    ]
    async with await Store.open(path, Sealer(KEY)) as store:
        for grant in grants:
            await store.put_grant(grant)
    return {g.human_id: g for g in grants}


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, Grant]]:
    """A store file as haasd wrote it, and the grants in it."""
    path = tmp_path_factory.mktemp("rows") / "haasd.db"
    return path, anyio.run(_write, path)


values = st.one_of(
    st.none(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    texts(max_size=30),
    st.binary(max_size=80),
    st.sampled_from(["active", "needs_reconsent", "reconsent_due", "tasks:dispatch", "", " "]),
)
#: how a column is damaged: a new value, a bit of its own flipped, or another row's value
damages = st.one_of(
    st.tuples(st.just("set"), values),
    st.tuples(st.just("flip"), st.integers(0, 8 * 80)),
    st.tuples(st.just("copy"), st.sampled_from(HUMANS)),
)


#: (human, column, how): one damage to one row
Edit = tuple[str, str, tuple[str, object]]


def flipped(value: object, bit: int) -> object:
    if isinstance(value, bytes) and value:
        data = bytearray(value)
        data[(bit // 8) % len(data)] ^= 1 << (bit % 8)
        return bytes(data)
    if isinstance(value, str) and value:
        at = bit % len(value)
        return value[:at] + chr(ord(value[at]) ^ 1) + value[at + 1 :]
    if isinstance(value, float):
        return value + 2.0 ** -(bit % 40)
    if isinstance(value, int):
        return value ^ (1 << (bit % 62))
    return b"\x00"


def damage(db: Path, edits: list[Edit]) -> bool:
    """Apply ``edits`` (human, column, how); False if SQLite refused one (nothing lands)."""
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA synchronous = OFF")  # a scratch copy: no fsync to wait for
        conn.execute("BEGIN")
        try:
            for human, column, (how, arg) in edits:
                sql = f"SELECT {column} FROM grants WHERE human_id = ?"  # noqa: S608 - a schema name
                row = conn.execute(sql, (human,)).fetchone()
                if row is None:
                    continue  # its human id was changed by an earlier edit
                if how == "flip":
                    value = flipped(row[0], int(str(arg)))
                elif how == "copy":
                    other = conn.execute(sql, (str(arg),)).fetchone()
                    value = row[0] if other is None else other[0]
                else:
                    value = arg
                update = f"UPDATE grants SET {column} = ? WHERE human_id = ?"  # noqa: S608
                conn.execute(update, (value, human))
        except sqlite3.IntegrityError:
            conn.execute("ROLLBACK")
            return False
        conn.execute("COMMIT")
    return True


async def _load(db: Path) -> tuple[list[Grant], frozenset[str]]:
    async with await Store.open(db, Sealer(KEY)) as store:
        return await store.list_grants(warn=False), store.unreadable


def is_placeholder(g: Grant) -> bool:
    """A quarantined row's stand-in: no token at all (no consent or refresh gives one)."""
    return not g.access_token.reveal() and not g.refresh_token.reveal()


def served_facts(g: Grant) -> tuple[object, ...]:
    """What decides which token is served to whom, and until when."""
    return (
        g.human_id,
        g.access_token.reveal(),
        g.refresh_token.reveal(),
        g.scope,
        State(g.state),
        g.access_expires_at,
        g.refresh_expires_at,
    )


edits = st.lists(
    st.tuples(st.sampled_from(HUMANS), st.sampled_from(COLUMNS), damages), min_size=1, max_size=3
)


def check(written: tuple[Path, dict[str, Grant]], edits: list[Edit], seen: Counter[str]) -> None:
    pristine, grants = written
    db = pristine.parent / "damaged" / "haasd.db"
    shutil.rmtree(db.parent, ignore_errors=True)
    db.parent.mkdir()
    shutil.copy(pristine, db)
    if not damage(db, edits):
        seen["refused by SQLite"] += 1
        return
    loaded, unreadable = anyio.run(_load, db)
    assert len(loaded) == len(grants)
    touched = {human for human, _, _ in edits}
    for grant in loaded:
        original = grants.get(grant.human_id)
        if is_placeholder(grant):
            assert grant.state is State.NEEDS_RECONSENT and grant.human_id in unreadable
            assert serve_decision(grant.state, grant.access_expires_at, T0, 0, 0) is not Serve.SERVE
            seen["quarantined"] += 1
        else:
            assert original is not None, f"a row loaded as a human never written: {grant.human_id}"
            assert served_facts(grant) == served_facts(original)
            seen["intact" if grant.human_id in touched else "untouched"] += 1
    for human in set(grants) - touched:  # the other humans' rows load as written
        assert any(g.human_id == human and not is_placeholder(g) for g in loaded), human


def test_a_damaged_row_loads_as_written_or_is_quarantined_never_served(
    written: tuple[Path, dict[str, Grant]],
) -> None:
    seen: Counter[str] = Counter()

    @profile(100)
    @given(edits=edits)
    def one(edits: list[Edit]) -> None:
        check(written, edits, seen)

    one()
    # rows were quarantined, rows whose harmless columns changed still loaded, and SQLite
    # refused some writes itself: the damage reached every kind of outcome
    assert seen["quarantined"] and seen["intact"] and seen["refused by SQLite"], seen
