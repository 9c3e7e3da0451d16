"""A store as haasd wrote it before grant rows were bound, for the migration tests."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from haasd.crypto import Key, Sealer
from haasd.grants import Grant
from haasd.store.schema import KEY_CHECK, KEY_CHECK_COLUMN, MIGRATIONS, RESEAL_GRANTS_AT


def write_previous_store(db: Path, key: Key, grants: list[Grant]) -> None:
    """A store as haasd wrote it before rows were bound (schema version
    RESEAL_GRANTS_AT): its migrations' SQL, its key check, tokens sealed with the human id
    and column alone (the associated data without bound values: see test_crypto)."""
    sealer = Sealer(key)
    with closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("PRAGMA journal_mode = WAL")
        for step in MIGRATIONS[:RESEAL_GRANTS_AT]:
            for sql in step:
                conn.execute(sql)
        check = sealer.seal(KEY_CHECK, human_id="", column=KEY_CHECK_COLUMN)
        conn.execute("INSERT INTO meta (name, value) VALUES (?, ?)", (KEY_CHECK_COLUMN, check))
        conn.execute(f"PRAGMA user_version = {RESEAL_GRANTS_AT}")
        for g in grants:
            hid = g.human_id
            conn.execute(
                "INSERT INTO grants (human_id, environment, scope, access_token,"
                " access_expires_at, refresh_token, refresh_expires_at, consented_at,"
                " last_refresh_at, state, last_error, consecutive_failures, next_refresh_at,"
                " last_served_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    hid, g.environment, " ".join(g.scope),
                    sealer.seal(g.access_token.reveal(), human_id=hid, column="access_token"),
                    g.access_expires_at,
                    sealer.seal(g.refresh_token.reveal(), human_id=hid, column="refresh_token"),
                    g.refresh_expires_at, g.consented_at, g.last_refresh_at, g.state.value,
                    g.last_error, g.consecutive_failures, g.next_refresh_at, g.last_served_at,
                ),
            )  # fmt: skip
