"""What a haasd store is on disk: its migrations, application id, key check, sealed
columns and the values bound to them. Public for :mod:`haasd.maintenance`, which reads
and re-seals files by these."""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Final

from haasd.crypto import RowValues

__all__ = [
    "APPLICATION_ID",
    "BOUND",
    "GRANT_ROW",
    "KEY_CHECK",
    "KEY_CHECK_COLUMN",
    "MIGRATIONS",
    "RESEAL_GRANTS_AT",
    "SEALED",
    "bound_values",
    "grant_bound",
]

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
    # No SQL: the grants' tokens are re-sealed with their row's BOUND values, which needs
    # the key (haasd.store._open does it in this migration's transaction).
    (),
)
#: The migration (0-based) in which the grants' tokens are re-sealed with :data:`BOUND`:
#: until then they were bound to the human id and column only.
RESEAL_GRANTS_AT: Final = 2

#: Every sealed column but the key check (which :meth:`Store.resealing` does): table, the
#: column whose value stands for the human id in the associated data, the sealed columns
#: (each its own column name in the associated data). ``haasd rekey`` re-seals exactly
#: these: a migration that adds a sealed column adds it here too.
SEALED: Final[tuple[tuple[str, str, tuple[str, ...]], ...]] = (
    ("grants", "human_id", ("access_token", "refresh_token")),
    ("pending_consents", "state_id", ("code_verifier",)),
)

#: The columns of a table whose values the associated data of its sealed columns binds
#: (after the row id and column name), in this order; encoded by :func:`bound_values`. A
#: row whose bound values were edited does not open. Every write of one of these re-seals
#: the row's tokens (see :mod:`haasd.store._grants`).
BOUND: Final[Mapping[str, tuple[str, ...]]] = {
    "grants": ("scope", "state", "access_expires_at", "refresh_expires_at"),
}
#: The first bound value of a grant row: names what follows, so that another set of bound
#: values later cannot be read as this one.
GRANT_ROW: Final = "grant-row-v1"
_DOUBLE: Final = struct.Struct(">d")
_LENGTH: Final = struct.Struct(">I")
#: two expiries as RowValues encodes them: each length-prefixed (8), then the double
_EXPIRIES: Final = struct.Struct(">IdId")
_GRANT_ROW_ENCODED: Final = RowValues(GRANT_ROW).encoded


def grant_bound(
    scope: object, state: object, access_expires_at: object, refresh_expires_at: object
) -> RowValues:
    """A grant row's bound values as they enter the associated data: its scope and state
    as stored, each expiry exactly (the IEEE 754 double SQLite stores, big-endian).
    Raises :class:`ValueError` for a value the schema never holds there (so an edited row
    is reported, not misread)."""
    if not isinstance(scope, str):
        raise ValueError("scope is not text")
    if not isinstance(state, str):
        raise ValueError("state is not text")
    if type(access_expires_at) is float and type(refresh_expires_at) is float:
        # what every row haasd wrote holds: encoded in one step, as RowValues would
        text, status = scope.encode("utf-8"), state.encode("utf-8")
        return RowValues.of_encoded(b"".join((
            _GRANT_ROW_ENCODED, _LENGTH.pack(len(text)), text, _LENGTH.pack(len(status)),
            status, _EXPIRIES.pack(8, access_expires_at + 0.0, 8, refresh_expires_at + 0.0),
        )))  # fmt: skip
    return RowValues(
        GRANT_ROW,
        scope,
        state,
        _exact(access_expires_at, "access_expires_at"),
        _exact(refresh_expires_at, "refresh_expires_at"),
    )


def bound_values(table: str, values: Sequence[object]) -> RowValues | None:
    """The bound values of a row of ``table``, given its :data:`BOUND` columns' values."""
    if table == "grants":
        return grant_bound(*values)
    if table in BOUND:  # pragma: no cover - a new bound table needs its encoding here
        raise NotImplementedError(table)
    return None


def _exact(value: object, name: str) -> bytes:
    # SQLite gives a REAL column back as float; -0.0 + 0.0 is 0.0, so zero has one form
    if type(value) is not float and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{name} is not a number")
    return _DOUBLE.pack(float(value) + 0.0)
