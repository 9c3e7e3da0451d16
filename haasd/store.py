"""The encrypted grant store: SQLite through aiosqlite.

One row per human in ``grants``; the access and refresh tokens are sealed blobs
(:mod:`haasd.crypto`), everything else is plain. Each state change is one transaction,
committed with ``synchronous=FULL`` before the method returns (``last_served_at`` is the
exception: see :meth:`Store.mark_served`).

``pending_consents`` holds the consents a human has not answered yet
(:mod:`haasd.consent`): the OAuth ``state`` only as its SHA-256 (``state_id``), the PKCE
verifier sealed with ``state_id`` in the place of a human id in the associated data — so
neither is on disk in the clear, and a verifier copied to another row does not open.

Opening is careful with files that are not ours. An existing file is first read through
an *immutable* read-only connection, which creates and changes nothing (not even the
``-wal``/``-shm``): a file that is not SQLite, not a haasd store, written by a newer
haasd, or sealed with another key is refused while it is still byte-identical. Only then
is it opened read-write, checked again, ``quick_check``-ed and migrated.
"""

from __future__ import annotations

import math
import os
import sqlite3
import sys
from collections.abc import AsyncIterator, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Self
from urllib.parse import quote

import aiosqlite
import anyio

from haasd.crypto import Sealer, sealed_key_id
from haasd.errors import (
    DecryptError,
    StoreCorruptError,
    StoreError,
    StoreLockedError,
    StoreNewerError,
    UnknownHumanError,
    WrongKeyError,
)
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret

__all__ = ["PendingRecord", "Store"]

# ``PRAGMA application_id`` of a haasd store ("HAAS")
_APPLICATION_ID: Final = 0x48414153
_BUSY_TIMEOUT: Final = 5.0  # seconds
_KEY_CHECK: Final = "haasd-key-check-v1"
_KEY_CHECK_COLUMN: Final = "key_check"

# Migration N (0-based) takes a store from user_version N to N + 1, in one transaction.
_MIGRATIONS: Sequence[tuple[str, ...]] = (
    (
        f"PRAGMA application_id = {_APPLICATION_ID}",
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

# Column order of every SELECT below and of Store._to_row / Store._to_grant.
_SELECT: Final = (
    "SELECT human_id, environment, scope, access_token, access_expires_at, refresh_token,"
    " refresh_expires_at, consented_at, last_refresh_at, state, last_error,"
    " consecutive_failures, next_refresh_at, last_served_at,"
    " intent_attempt_id, intent_fingerprint, intent_started_at FROM grants"
)
_PUT: Final = (
    "INSERT OR REPLACE INTO grants (human_id, environment, scope, access_token,"
    " access_expires_at, refresh_token, refresh_expires_at, consented_at, last_refresh_at,"
    " state, last_error, consecutive_failures, next_refresh_at, last_served_at,"
    " intent_attempt_id, intent_fingerprint, intent_started_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_BEGIN: Final = (
    "UPDATE grants SET intent_attempt_id = ?, intent_fingerprint = ?, intent_started_at = ?"
    " WHERE human_id = ?"
)
_FINISH: Final = (
    "UPDATE grants SET scope = ?, access_token = ?, access_expires_at = ?, refresh_token = ?,"
    " refresh_expires_at = ?, last_refresh_at = ?, state = ?, last_error = ?,"
    " consecutive_failures = ?, next_refresh_at = ?, intent_attempt_id = NULL,"
    " intent_fingerprint = NULL, intent_started_at = NULL WHERE human_id = ?"
)
_STATUS: Final = (
    "UPDATE grants SET state = ?, last_error = ?, consecutive_failures = ?, next_refresh_at = ?"
    " WHERE human_id = ?"
)
_STATUS_CLEAR: Final = (
    "UPDATE grants SET state = ?, last_error = ?, consecutive_failures = ?, next_refresh_at = ?,"
    " intent_attempt_id = NULL, intent_fingerprint = NULL, intent_started_at = NULL"
    " WHERE human_id = ?"
)
# pending_consents: columns in PendingRecord's order, the sealed verifier apart.
_PENDING_SELECT: Final = (
    "SELECT state_id, scope, human_id, redirect_uri, created_at, expires_at FROM pending_consents"
)
# One statement, so the bound holds however many tasks add at once.
_ADD_PENDING: Final = (
    "INSERT INTO pending_consents (code_verifier, state_id, scope, human_id, redirect_uri,"
    " created_at, expires_at) SELECT ?, ?, ?, ?, ?, ?, ?"
    " WHERE (SELECT count(*) FROM pending_consents) < ?"
)
_RESTORE_PENDING: Final = (
    "INSERT OR IGNORE INTO pending_consents (code_verifier, state_id, scope, human_id,"
    " redirect_uri, created_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?)"
)
_TAKE_PENDING: Final = (
    "DELETE FROM pending_consents WHERE state_id = ? RETURNING code_verifier,"
    " state_id, scope, human_id, redirect_uri, created_at, expires_at"
)
_TAKE_EXPIRED: Final = (
    "DELETE FROM pending_consents WHERE expires_at <= ? RETURNING"
    " state_id, scope, human_id, redirect_uri, created_at, expires_at"
)
_VERIFIER_COLUMN: Final = "code_verifier"
_SERVED: Final = (
    "UPDATE grants SET last_served_at = max(coalesce(last_served_at, ?1), ?1) WHERE human_id = ?2"
)


@dataclass(frozen=True, slots=True)
class PendingRecord:
    """A consent waiting for the human's answer, as stored (see :mod:`haasd.consent`).

    Safe to show and log: the state is only its digest, and the PKCE verifier travels
    apart from the record, as a :class:`~haasd.secret.Secret`.
    """

    #: SHA-256 of the OAuth ``state``, hex
    state_id: str
    scope: tuple[str, ...]
    #: the human named when the consent was started (a re-consent), if any
    human_id: str | None
    redirect_uri: str
    created_at: float
    expires_at: float


class Store:
    """The grant table of one SQLite file. Build with ``await Store.open(path, sealer)``.

    Usable as ``async with await Store.open(...) as store:``; methods are safe to call
    from concurrent tasks (one lock orders the transactions on the one connection).
    """

    __slots__ = ("_closed", "_conn", "_lock", "_path", "_scopes", "_sealer", "_served")

    def __init__(self, conn: aiosqlite.Connection, sealer: Sealer, path: Path) -> None:
        self._conn = conn
        self._sealer = sealer
        self._path = path
        self._lock = anyio.Lock()
        self._served: dict[str, float] = {}
        self._scopes: dict[str, tuple[str, ...]] = {}
        self._closed = False

    @classmethod
    async def open(cls, path: Path, sealer: Sealer) -> Store:
        """Open (creating if absent or empty) the store at ``path``.

        Raises :class:`WrongKeyError`, :class:`StoreCorruptError` or
        :class:`StoreNewerError` without changing a byte of an existing file.
        """
        uri, hot_wal = await anyio.to_thread.run_sync(_prepare_file, path)
        # The immutable probe reads the main file only, ignoring any -wal, and changes
        # nothing. With a pending WAL (a crash, or another process) the main file alone may
        # look damaged or blank; then only its key and version verdicts are final.
        probe = await _connect(path, uri + "?mode=ro&immutable=1")
        try:
            await _examine(probe, sealer, path)
        except StoreCorruptError:
            if not hot_wal:
                raise
        finally:
            with anyio.CancelScope(shield=True):
                await probe.close()
        conn = await _connect(path, uri)
        try:
            await _setup(conn, sealer, path)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await conn.close()
            raise
        return cls(conn, sealer, path)

    @property
    def path(self) -> Path:
        return self._path

    async def close(self) -> None:
        """Write pending ``last_served_at`` values and close. Idempotent."""
        if self._closed:
            return
        with anyio.CancelScope(shield=True):
            try:
                await self.flush_served()
            finally:
                self._closed = True
                with _translate(self._path, "close"):
                    await self._conn.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------------------

    async def get_grant(self, human_id: str) -> Grant:
        """The grant of ``human_id``, or :class:`UnknownHumanError`."""
        rows = await self._fetch(f"{_SELECT} WHERE human_id = ?", (human_id,))
        if not rows:
            raise UnknownHumanError(human_id)
        return self._to_grant(rows[0])

    async def list_grants(self) -> list[Grant]:
        """Every grant, decrypted, ordered by human_id (one query: for loading at start)."""
        rows = await self._fetch(f"{_SELECT} ORDER BY human_id")
        # ~15 µs a row (mostly AES and the frozen dataclass): off the event loop
        return await anyio.to_thread.run_sync(self._to_grants, rows)

    async def count_grants(self) -> int:
        rows = await self._fetch("SELECT count(*) FROM grants")
        return int(rows[0][0])

    # -- writes: one transaction each, committed (synchronous=FULL) before returning ------

    async def put_grant(self, grant: Grant) -> None:
        """Insert or replace the grant of ``grant.human_id``."""
        await self._write(_PUT, [self._to_row(grant)], "put grant")

    async def put_grants(self, grants: Iterable[Grant]) -> None:
        """Insert or replace many grants in a single transaction."""
        await self._write(_PUT, [self._to_row(g) for g in grants], "put grants")

    async def delete_grant(self, human_id: str) -> bool:
        """Forget the grant of ``human_id``; False if there was none."""
        self._served.pop(human_id, None)
        sql = "DELETE FROM grants WHERE human_id = ?"
        return await self._write(sql, [(human_id,)], "delete grant") > 0

    async def begin_refresh(self, human_id: str, intent: RefreshIntent) -> None:
        """Record that a refresh of ``human_id`` is about to spend its refresh token.

        Overwrites a left-over intent (from a crash): the caller has judged it by then.
        """
        params = (intent.attempt_id, intent.fingerprint, intent.started_at, human_id)
        await self._update(human_id, _BEGIN, params, "begin refresh")

    async def finish_refresh(self, grant: Grant, *, attempt_id: str | None = None) -> bool:
        """Store a refresh's outcome and clear the intent, in one transaction.

        Writes the tokens, their expiries, scope and status fields of ``grant``;
        environment, consented_at and last_served_at stay as stored. With
        ``attempt_id``, only if the row still carries that intent: False (nothing
        written) when the grant was replaced or deleted while the refresh was in flight.
        """
        hid = grant.human_id
        seal = self._sealer.seal
        params = (
            " ".join(grant.scope),
            seal(grant.access_token.reveal(), human_id=hid, column="access_token"),
            grant.access_expires_at,
            seal(grant.refresh_token.reveal(), human_id=hid, column="refresh_token"),
            grant.refresh_expires_at,
            grant.last_refresh_at,
            State(grant.state).value,
            grant.last_error,
            grant.consecutive_failures,
            grant.next_refresh_at,
            hid,
        )
        if attempt_id is None:
            await self._update(hid, _FINISH, params, "finish refresh")
            return True
        sql = f"{_FINISH} AND intent_attempt_id = ?"
        return await self._write(sql, [(*params, attempt_id)], "finish refresh") == 1

    async def update_status(
        self,
        human_id: str,
        *,
        state: State,
        last_error: str | None,
        consecutive_failures: int,
        next_refresh_at: float | None,
        clear_intent: bool = False,
    ) -> None:
        """Change a grant's status; ``clear_intent`` also ends a refresh that came to nothing."""
        sql = _STATUS_CLEAR if clear_intent else _STATUS
        params = (State(state).value, last_error, consecutive_failures, next_refresh_at)
        await self._update(human_id, sql, (*params, human_id), "update status")

    def mark_served(self, human_id: str, at: float) -> None:
        """Note that ``human_id``'s token was served at ``at``; no I/O.

        Serving is far too frequent for a synced transaction each, so the times wait in
        memory for :meth:`flush_served` (call it periodically; :meth:`close` does). A crash
        loses at most the times since the last flush, which only makes a human look a
        little more dormant than they were. Reads include the pending times.
        """
        self._check_open()
        self._note_served(human_id, at)

    async def flush_served(self) -> int:
        """Write the pending ``last_served_at`` times in one transaction; how many."""
        if not self._served:
            return 0
        pending, self._served = self._served, {}
        rows = [(at, hid) for hid, at in pending.items()]
        try:
            await self._write(_SERVED, rows, "write last_served_at")
        except BaseException:
            for hid, at in pending.items():
                self._note_served(hid, at)
            raise
        return len(rows)

    # -- pending consents (haasd.consent) ------------------------------------------------

    async def add_pending(self, record: PendingRecord, verifier: Secret, *, limit: int) -> bool:
        """Insert a pending consent unless ``limit`` are pending already; whether it was."""
        params = (self._seal_verifier(record, verifier), *_pending_row(record), limit)
        return await self._write(_ADD_PENDING, [params], "add pending consent") > 0

    async def restore_pending(self, record: PendingRecord, verifier: Secret) -> None:
        """Put back what :meth:`take_pending` took (not counted against the limit)."""
        params = (self._seal_verifier(record, verifier), *_pending_row(record))
        await self._write(_RESTORE_PENDING, [params], "restore pending consent")

    async def get_pending(self, state_id: str) -> PendingRecord | None:
        rows = await self._fetch(_PENDING_SELECT + " WHERE state_id = ?", (state_id,))
        return _to_pending(rows[0]) if rows else None

    async def list_pending(self) -> list[PendingRecord]:
        """Every pending consent, the first to expire first."""
        rows = await self._fetch(_PENDING_SELECT + " ORDER BY expires_at, state_id")
        return [_to_pending(row) for row in rows]

    async def next_pending_expiry(self) -> float | None:
        rows = await self._fetch("SELECT min(expires_at) FROM pending_consents")
        return None if rows[0][0] is None else float(rows[0][0])

    async def take_pending(self, state_id: str) -> tuple[PendingRecord, Secret] | None:
        """Delete and return a pending consent and its verifier, in one statement: of two
        tasks (or processes) taking the same one, exactly one gets it."""
        rows = await self._write_returning(_TAKE_PENDING, (state_id,), "take pending consent")
        if not rows:
            return None
        blob, *fields = rows[0]
        record = _to_pending(fields)
        opened = self._sealer.open(blob, human_id=record.state_id, column=_VERIFIER_COLUMN)
        return record, Secret(opened)

    async def take_expired_pending(self, now: float) -> list[PendingRecord]:
        """Delete and return every pending consent expired at ``now``, in one statement."""
        rows = await self._write_returning(_TAKE_EXPIRED, (now,), "prune pending consents")
        return sorted((_to_pending(row) for row in rows), key=lambda r: r.expires_at)

    # -- maintenance (haasd.maintenance) -------------------------------------------------

    @asynccontextmanager
    async def resealing(self, sealer: Sealer) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction in which the body re-seals every token and verifier under
        ``sealer``; the key check is re-sealed last, then ``COMMIT`` and a checkpoint. From
        then on this store seals with ``sealer``. ``secure_delete`` zeroes the old blobs'
        space. Rolled back if anything raises; under the lock and shielded, as every write.
        """
        self._check_open()
        conn, old = self._conn, self._sealer
        with anyio.CancelScope(shield=True), _translate(self._path, "re-seal"):
            async with self._lock:
                await conn.execute("PRAGMA secure_delete = ON")
                await conn.execute("BEGIN IMMEDIATE")
                try:
                    yield conn
                    sql = "SELECT value FROM meta WHERE name = ?"
                    check = await _scalar(conn, sql, (_KEY_CHECK_COLUMN,))
                    text = old.open(check, human_id="", column=_KEY_CHECK_COLUMN)
                    blob = sealer.seal(text, human_id="", column=_KEY_CHECK_COLUMN)
                    sql = "UPDATE meta SET value = ? WHERE name = ?"
                    await conn.execute(sql, (blob, _KEY_CHECK_COLUMN))
                    await conn.execute("COMMIT")
                except BaseException:
                    if conn.in_transaction:
                        await conn.execute("ROLLBACK")
                    raise
                self._sealer = sealer
                await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- internals -----------------------------------------------------------------------

    def _seal_verifier(self, record: PendingRecord, verifier: Secret) -> bytes:
        return self._sealer.seal(
            verifier.reveal(), human_id=record.state_id, column=_VERIFIER_COLUMN
        )

    def _check_open(self) -> None:
        if self._closed:
            raise StoreError(f"store {self._path} is closed")

    def _note_served(self, human_id: str, at: float) -> None:
        if at > self._served.get(human_id, -math.inf):
            self._served[human_id] = at

    async def _fetch(self, sql: str, params: Sequence[Any] = ()) -> list[sqlite3.Row]:
        self._check_open()
        # shielded too: aiosqlite resolves the future from its thread, and a cancelled
        # future makes the event loop log InvalidStateError at shutdown
        with anyio.CancelScope(shield=True), _translate(self._path, "read"):
            async with self._lock:
                rows = list(await self._conn.execute_fetchall(sql, params))
        return rows

    async def _update(self, human_id: str, sql: str, params: Sequence[Any], what: str) -> None:
        if await self._write(sql, [params], what) == 0:
            raise UnknownHumanError(human_id)

    async def _write(self, sql: str, rows: Sequence[Sequence[Any]], what: str) -> int:
        """Run ``sql`` once per parameter row, all in one transaction; rows changed.

        Shielded from cancellation: once begun, a write is committed or rolled back.
        """
        self._check_open()
        if not rows:
            return 0
        conn = self._conn
        changed = 0
        with anyio.CancelScope(shield=True), _translate(self._path, what):
            async with self._lock:
                if len(rows) == 1:
                    # autocommit: a lone statement is its own transaction, synced on return
                    changed = (await conn.execute(sql, rows[0])).rowcount
                else:
                    await conn.execute("BEGIN IMMEDIATE")
                    try:
                        changed = (await conn.executemany(sql, rows)).rowcount
                        await conn.execute("COMMIT")
                    except BaseException:
                        if conn.in_transaction:
                            await conn.execute("ROLLBACK")
                        raise
        return changed

    async def _write_returning(
        self, sql: str, params: Sequence[Any], what: str
    ) -> list[sqlite3.Row]:
        """One changing statement with ``RETURNING``: its own transaction (autocommit ends
        it once every row is read), shielded from cancellation like :meth:`_write`."""
        self._check_open()
        rows: list[sqlite3.Row] = []
        with anyio.CancelScope(shield=True), _translate(self._path, what):
            async with self._lock:
                rows = list(await self._conn.execute_fetchall(sql, params))
        return rows

    def _to_row(self, g: Grant) -> tuple[Any, ...]:
        seal = self._sealer.seal
        intent = g.intent
        return (
            g.human_id,
            g.environment,
            " ".join(g.scope),
            seal(g.access_token.reveal(), human_id=g.human_id, column="access_token"),
            g.access_expires_at,
            seal(g.refresh_token.reveal(), human_id=g.human_id, column="refresh_token"),
            g.refresh_expires_at,
            g.consented_at,
            g.last_refresh_at,
            State(g.state).value,
            g.last_error,
            g.consecutive_failures,
            g.next_refresh_at,
            g.last_served_at,
            intent.attempt_id if intent else None,
            intent.fingerprint if intent else None,
            intent.started_at if intent else None,
        )

    def _to_grants(self, rows: list[sqlite3.Row]) -> list[Grant]:
        return [self._to_grant(row) for row in rows]

    def _scope_tuple(self, scope: str) -> tuple[str, ...]:
        """One shared tuple per distinct scope string: 100k grants hold a handful."""
        cached = self._scopes.get(scope)
        if cached is None:
            cached = self._scopes[scope] = tuple(scope.split())
        return cached

    def _to_grant(self, row: sqlite3.Row) -> Grant:
        (hid, env, scope, at, at_exp, rt, rt_exp, consented, last_refresh, state, error,
         failures, next_refresh, served, attempt, fp, started) = row  # fmt: skip
        open_ = self._sealer.open
        pending = self._served.get(hid)
        if pending is not None and (served is None or pending > served):
            served = pending
        try:
            return Grant(
                human_id=hid,
                environment=sys.intern(env),
                scope=self._scope_tuple(scope),
                access_token=Secret(open_(at, human_id=hid, column="access_token")),
                access_expires_at=at_exp,
                refresh_token=Secret(open_(rt, human_id=hid, column="refresh_token")),
                refresh_expires_at=rt_exp,
                consented_at=consented,
                last_refresh_at=last_refresh,
                state=State(state),
                last_error=error,
                consecutive_failures=failures,
                next_refresh_at=next_refresh,
                last_served_at=served,
                intent=None if attempt is None else RefreshIntent(attempt, fp, started),
            )
        except (TypeError, ValueError) as exc:
            raise StoreCorruptError(f"store {self._path}: grant {hid!r} is malformed") from exc


def _pending_row(record: PendingRecord) -> tuple[Any, ...]:
    return (
        record.state_id,
        " ".join(record.scope),
        record.human_id,
        record.redirect_uri,
        record.created_at,
        record.expires_at,
    )


def _to_pending(row: Sequence[Any]) -> PendingRecord:
    state_id, scope, human_id, redirect_uri, created_at, expires_at = row
    return PendingRecord(
        state_id, tuple(scope.split()), human_id, redirect_uri, created_at, expires_at
    )


@contextmanager
def _translate(path: Path, what: str) -> Iterator[None]:
    """Turn sqlite3/aiosqlite errors into :class:`StoreError` subclasses, ``from`` them."""
    try:
        yield
    except sqlite3.Error as exc:
        code = exc.sqlite_errorcode & 0xFF
        message = f"store {path}: {what} failed: {exc}"
        if code in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
            raise StoreLockedError(f"{message} (is another haasd using it?)") from exc
        if code in (sqlite3.SQLITE_CORRUPT, sqlite3.SQLITE_NOTADB):
            raise StoreCorruptError(f"{message}; refusing to use it") from exc
        raise StoreError(message) from exc


def _prepare_file(path: Path) -> tuple[str, bool]:
    """Create ``path`` (mode 0600) if absent. Its SQLite URI, and whether a -wal is pending."""
    uri = "file:" + quote(str(path.absolute()))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        wal = path.with_name(path.name + "-wal")
        return uri, wal.exists() and wal.stat().st_size > 0
    except OSError as exc:
        raise StoreError(f"cannot create store {path}: {exc.strerror}") from exc
    os.close(fd)
    return uri, False


async def _connect(path: Path, uri: str) -> aiosqlite.Connection:
    with _translate(path, "open"):
        # sqlite3's timeout is SQLite's busy_timeout: wait this long for another writer
        return await aiosqlite.connect(uri, uri=True, isolation_level=None, timeout=_BUSY_TIMEOUT)


async def _scalar(conn: aiosqlite.Connection, sql: str, params: Sequence[Any] = ()) -> Any:
    rows = list(await conn.execute_fetchall(sql, params))
    return rows[0][0] if rows else None


async def _examine(conn: aiosqlite.Connection, sealer: Sealer, path: Path) -> int | None:
    """Read-only checks of an existing file: its schema version, or None if it is blank."""
    with _translate(path, "read"):
        app_id = await _scalar(conn, "PRAGMA application_id")
        version = await _scalar(conn, "PRAGMA user_version")
        names = {row[0] for row in await conn.execute_fetchall("SELECT name FROM sqlite_master")}
        if not names and app_id == 0 and version == 0:
            return None
        if app_id != _APPLICATION_ID or "meta" not in names:
            raise StoreCorruptError(f"{path} is a SQLite database but not a haasd store")
        if version > len(_MIGRATIONS):
            raise StoreNewerError(
                f"store {path} has schema version {version}, newer than this haasd's"
                f" {len(_MIGRATIONS)}; upgrade haasd"
            )
        check = await _scalar(conn, "SELECT value FROM meta WHERE name = ?", (_KEY_CHECK_COLUMN,))
    if not isinstance(check, bytes):
        raise StoreCorruptError(f"store {path} has no key-check value")
    try:
        opened = sealer.open(check, human_id="", column=_KEY_CHECK_COLUMN)
    except DecryptError as exc:
        raise WrongKeyError(
            f"the key does not match this store ({path} was sealed with key"
            f" {sealed_key_id(check)}, the key given is {sealer.current_key_id});"
            " use the key file it was created with"
        ) from exc
    if opened != _KEY_CHECK:
        raise StoreCorruptError(f"store {path} has a malformed key-check value")
    return int(version)


async def _setup(conn: aiosqlite.Connection, sealer: Sealer, path: Path) -> None:
    """Verify (again, authoritatively), check integrity, then configure and migrate."""
    version = await _examine(conn, sealer, path)
    with _translate(path, "open"):
        if version is not None:
            problems = [row[0] for row in await conn.execute_fetchall("PRAGMA quick_check(5)")]
            if problems != ["ok"]:
                found = "; ".join(problems).replace("\n", "; ")
                raise StoreCorruptError(f"store {path} is damaged: {found}")
        mode = await _scalar(conn, "PRAGMA journal_mode = WAL")
        if mode != "wal":
            raise StoreError(f"store {path}: cannot use WAL journaling (got {mode!r})")
        await conn.execute("PRAGMA synchronous = FULL")
    for step in range(version or 0, len(_MIGRATIONS)):
        with _translate(path, f"migration to schema version {step + 1}"):
            await conn.execute("BEGIN IMMEDIATE")
            try:
                for sql in _MIGRATIONS[step]:
                    await conn.execute(sql)
                if step == 0:
                    check = sealer.seal(_KEY_CHECK, human_id="", column=_KEY_CHECK_COLUMN)
                    await conn.execute(
                        "INSERT INTO meta (name, value) VALUES (?, ?)", (_KEY_CHECK_COLUMN, check)
                    )
                await conn.execute(f"PRAGMA user_version = {step + 1}")
                await conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    await conn.execute("ROLLBACK")
                raise
    if (version or 0) < len(_MIGRATIONS):
        # Put the schema and key check into the main file, where the immutable probe reads.
        with _translate(path, "checkpoint"):
            await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
