"""What a haasd store is on disk: its migrations, application id, key check and sealed
columns. Public for :mod:`haasd.maintenance`, which reads and re-seals files by these."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

__all__ = ["APPLICATION_ID", "KEY_CHECK", "KEY_CHECK_COLUMN", "MIGRATIONS", "SEALED"]

# ``PRAGMA application_id`` of a haasd store ("HAAS")
APPLICATION_ID: Final = 0x48414153
KEY_CHECK: Final = "haasd-key-check-v1"
#: the ``meta`` row holding :data:`KEY_CHECK`, sealed with this as its column name
KEY_CHECK_COLUMN: Final = "key_check"

# Migration N (0-based) takes a store from user_version N to N + 1, in one transaction.
MIGRATIONS: Sequence[tuple[str, ...]] = (
    (
        f"PRAGMA application_id = {APPLICATION_ID}",
        "CREATE TABLE meta (name TEXT PRIMARY KEY NOT NULL, value BLOB NOT NULL)",
        """CREATE TABLE grants (
            human_id TEXT PRIMARY KEY NOT NULL,
            environment TEXT NOT NULL,
            scope TEXT NOT NULL,
            access_token BLOB NOT NULL,
            access_expires_at REAL NOT NULL,
            refresh_token BLOB NOT NULL,
            refresh_expires_at REAL NOT NULL,
            consented_at REAL NOT NULL,
            last_refresh_at REAL,
            state TEXT NOT NULL
                CHECK (state IN ('active', 'reconsent_due', 'needs_reconsent')),
            last_error TEXT,
            consecutive_failures INTEGER NOT NULL DEFAULT 0,
            next_refresh_at REAL,
            last_served_at REAL,
            intent_attempt_id TEXT,
            intent_fingerprint TEXT,
            intent_started_at REAL
        )""",
    ),
    (
        """CREATE TABLE pending_consents (
            state_id TEXT PRIMARY KEY NOT NULL,
            code_verifier BLOB NOT NULL,
            scope TEXT NOT NULL,
            human_id TEXT,
            redirect_uri TEXT NOT NULL,
            created_at REAL NOT NULL,
            expires_at REAL NOT NULL
        )""",
        "CREATE INDEX pending_consents_by_expiry ON pending_consents (expires_at)",
    ),
)

#: Every sealed column but the key check (which :meth:`Store.resealing` does): table, the
#: column whose value stands for the human id in the associated data, the sealed columns
#: (each its own column name in the associated data). ``haasd rekey`` re-seals exactly
#: these: a migration that adds a sealed column adds it here too.
SEALED: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("grants", "human_id", ("access_token", "refresh_token")),
    ("pending_consents", "state_id", ("code_verifier",)),
)
