"""A store's rows as they are, whichever the backend: what ``haasd move-store``,
``backup`` and ``restore`` copy between SQLite and PostgreSQL, and what ``rekey`` re-seals.

Both backends hold the same columns (:mod:`haasd.store.schema`, :mod:`haasd.pgstore._sql`)
and seal the same way: a token's associated data is its human id, column name and the
row's bound values (scope, state, expiries), never anything of the backend. So a row is
copied *as it is* — ciphertext and all — and opens in the other store with the same key;
an unreadable row (quarantined) is carried over as the evidence it is. A copy is checked
twice: read back in the writing transaction it must equal the rows given, value for
value, and once written the key must open the same grants to the same token fingerprints
(:class:`Summary`).

This module also reads and writes those rows in a SQLite file, through :mod:`sqlite3`
(the callers run it in a thread): always a private copy, or a target under its lock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from haasd.crypto import Sealer, fingerprint
from haasd.errors import HaasdError, StoreError
from haasd.grants import Grant
from haasd.store import store_error_of
from haasd.store._grants import is_placeholder, to_grants
from haasd.store.schema import BOUND, bound_values
from haasd.storefiles import sqlite_uri

__all__ = [
    "GRANT_COLUMNS",
    "PENDING_COLUMNS",
    "NotEmptyError",
    "Row",
    "Rows",
    "Summary",
    "check_read_back",
    "insert",
    "read_sqlite",
    "resealed_values",
    "select",
    "summary_of",
    "write_sqlite",
]

Row = tuple[Any, ...]

#: ``grants``' columns in :func:`haasd.store._grants.to_grant`'s order
GRANT_COLUMNS: Final = (
    "human_id", "environment", "scope", "access_token", "access_expires_at", "refresh_token",
    "refresh_expires_at", "consented_at", "last_refresh_at", "state", "last_error",
    "consecutive_failures", "next_refresh_at", "last_served_at", "intent_attempt_id",
    "intent_fingerprint", "intent_started_at",
)  # fmt: skip
#: ``pending_consents``' columns, the sealed verifier second
PENDING_COLUMNS: Final = (
    "state_id", "code_verifier", "scope", "human_id", "redirect_uri", "created_at", "expires_at",
)  # fmt: skip


def select(table: str, columns: Sequence[str]) -> str:
    return f"SELECT {', '.join(columns)} FROM {table}"  # noqa: S608 - constants


def insert(table: str, columns: Sequence[str], mark: str) -> str:
    marks = ", ".join([mark] * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"  # noqa: S608 - constants


@dataclass(frozen=True, slots=True)
class Rows:
    """Every grant and pending consent of a store, as stored: :data:`GRANT_COLUMNS` and
    :data:`PENDING_COLUMNS` rows, each ordered by its first column."""

    grants: tuple[Row, ...]
    pending: tuple[Row, ...]

    @classmethod
    def of(cls, grants: Iterable[Sequence[Any]], pending: Iterable[Sequence[Any]]) -> Rows:
        return cls(
            tuple(sorted((tuple(r) for r in grants), key=lambda r: r[0])),
            tuple(sorted((tuple(r) for r in pending), key=lambda r: r[0])),
        )

    def describe(self) -> str:
        n, m = len(self.grants), len(self.pending)
        return f"{n} grant{'' if n == 1 else 's'} and {m} pending consent{'' if m == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class Summary:
    """What the key reads in a store: each readable grant's token fingerprints, the
    unreadable grants, and the pending consents' ids."""

    fingerprints: dict[str, tuple[str, str]]
    unreadable: tuple[str, ...]
    pending: tuple[str, ...]

    @classmethod
    def of_grants(cls, grants: Iterable[Grant], pending: Iterable[str]) -> Summary:
        readable = {
            g.human_id: (fingerprint(g.access_token), fingerprint(g.refresh_token))
            for g in grants
            if not is_placeholder(g)
        }
        unreadable = sorted(g.human_id for g in grants if is_placeholder(g))
        return cls(readable, tuple(unreadable), tuple(sorted(pending)))

    @property
    def grants(self) -> int:
        return len(self.fingerprints) + len(self.unreadable)

    def difference(self, other: Summary) -> str | None:
        """What ``other`` holds differently, in words (None if nothing); never a value."""
        for what, mine, theirs in (
            ("grants", set(self.fingerprints) | set(self.unreadable),
             set(other.fingerprints) | set(other.unreadable)),
            ("unreadable grants", set(self.unreadable), set(other.unreadable)),
            ("pending consents", set(self.pending), set(other.pending)),
        ):  # fmt: skip
            if mine != theirs:
                return f"{what} differ ({len(mine)} here, {len(theirs)} there)"
        changed = [h for h, fp in self.fingerprints.items() if other.fingerprints.get(h) != fp]
        if changed:
            return f"the tokens of {len(changed)} grants differ (first: {changed[0]})"
        return None


def summary_of(rows: Rows, sealer: Sealer) -> Summary:
    """What ``sealer`` reads in ``rows`` (unreadable rows as such, as a store reads them)."""
    grants, _ = to_grants(rows.grants, sealer, {}, {})
    return Summary.of_grants(grants, (row[0] for row in rows.pending))


class NotEmptyError(HaasdError):
    """The target of a copy already holds grants or pending consents."""

    def __init__(self, where: str, grants: int, pending: int) -> None:
        super().__init__(
            f"{where} already holds {grants} grant{'' if grants == 1 else 's'} and {pending}"
            f" pending consent{'' if pending == 1 else 's'}"
        )


def resealed_values(
    table: str,
    columns: Sequence[str],
    old: Sealer,
    new: Sealer,
    row_id: object,
    blobs: Sequence[object],
    values: Sequence[object],
) -> list[bytes]:
    """The sealed ``blobs`` of one row of ``table`` opened with ``old`` and sealed with
    ``new``, bound to the same row values (``values``: its :data:`BOUND` columns'). Raises
    :class:`DecryptError` or :class:`ValueError` for a row that does not open."""
    sealed = [blob for blob in blobs if isinstance(blob, bytes)]
    try:
        if not isinstance(row_id, str) or len(sealed) != len(blobs):
            raise ValueError("it holds values the schema never writes")
        bound = bound_values(table, values) if table in BOUND else None
    except ValueError as exc:
        raise ValueError(f"cannot open a row of {table} ({row_id!r}): {exc}") from None
    return [
        new.seal(old.open(blob, human_id=row_id, column=c, bound=bound),
                 human_id=row_id, column=c, bound=bound)
        for c, blob in zip(columns, sealed, strict=True)
    ]  # fmt: skip


# --- SQLite ------------------------------------------------------------------------------


def read_sqlite(path: Path) -> Rows:
    """The rows of the haasd store at ``path`` (current schema), in one read transaction."""
    try:
        with closing(sqlite3.connect(sqlite_uri(path, "mode=rw"), uri=True)) as conn:
            conn.text_factory = _lenient_text
            return _read(conn)
    except sqlite3.Error as exc:
        raise store_error_of(path, "read", exc) from exc


def write_sqlite(path: Path, rows: Rows) -> None:
    """Insert ``rows`` into the empty haasd store at ``path`` in one transaction, read
    them back before ``COMMIT``; :class:`NotEmptyError` if it holds any."""
    try:
        with closing(
            sqlite3.connect(sqlite_uri(path, "mode=rw"), uri=True, isolation_level=None, timeout=5)
        ) as conn:
            conn.text_factory = _lenient_text
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            try:
                _fill(conn, rows, str(path))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
    except sqlite3.Error as exc:
        raise store_error_of(path, "write", exc) from exc


def check_read_back(where: str, given: Rows, read: Rows) -> None:
    if read != given:
        raise StoreError(
            f"{where}: the rows read back differ from those written ({read.describe()} read,"
            f" {given.describe()} written); nothing was written"
        )


def _fill(conn: sqlite3.Connection, rows: Rows, where: str) -> None:
    grants, pending = (
        conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]  # noqa: S608 - constants
        for t in ("grants", "pending_consents")
    )
    if grants or pending:
        raise NotEmptyError(where, grants, pending)
    conn.executemany(insert("grants", GRANT_COLUMNS, "?"), rows.grants)
    conn.executemany(insert("pending_consents", PENDING_COLUMNS, "?"), rows.pending)
    check_read_back(where, rows, _read(conn))


def _read(conn: sqlite3.Connection) -> Rows:
    in_transaction = conn.in_transaction
    if not in_transaction:
        conn.execute("BEGIN")  # one snapshot for both tables
    try:
        grants = conn.execute(select("grants", GRANT_COLUMNS)).fetchall()
        pending = conn.execute(select("pending_consents", PENDING_COLUMNS)).fetchall()
    finally:
        if not in_transaction:
            conn.execute("ROLLBACK")
    return Rows.of(grants, pending)


def _lenient_text(data: bytes) -> str:
    # as the store reads: an edited row with invalid UTF-8 reads, and does not open
    return data.decode("utf-8", "replace")
