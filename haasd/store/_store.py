"""The :class:`Store`: one connection, one lock, and a transaction for each change."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final, Self

import aiosqlite
import anyio
import structlog

from haasd.crypto import Sealer
from haasd.errors import DecryptError, UnknownHumanError
from haasd.grantpack import Sealed
from haasd.grants import Grant, RefreshIntent, State
from haasd.secret import Secret
from haasd.store._books import Quarantine, ServedTimes, flush_then_close
from haasd.store._database import Database
from haasd.store._grants import (
    BEGIN_REFRESH,
    FINISH_REFRESH,
    LOAD_CHUNK,
    PUT_GRANT,
    SELECT_GRANTS,
    SELECT_SEALED,
    SET_SERVED,
    SET_STATE,
    SET_STATE_CLEAR,
    SET_STATUS,
    SET_STATUS_CLEAR,
    grant_row,
    is_placeholder,
    refresh_row,
    resealed,
    to_grants,
    why_unreadable,
)
from haasd.store._open import open_connection
from haasd.store._pending import (
    ADD_PENDING,
    RESTORE_PENDING,
    SELECT_PENDING,
    TAKE_EXPIRED,
    TAKE_PENDING,
    PendingRecord,
    pending_row,
    to_pending,
    to_taken,
)
from haasd.store._reading import Loaded, Reads
from haasd.store._sqlite import scalar, transaction, translate
from haasd.store.schema import KEY_CHECK_COLUMN

_log: Final = structlog.get_logger("haasd.store")
#: human ids per statement of get_grants (SQLite allows 999 parameters)
_IDS_PER_READ: Final = 500


class Store(Reads):
    """The grant table of one SQLite file. Build with ``await Store.open(path, sealer)``.

    Usable as ``async with await Store.open(...) as store:``; methods are safe to call
    from concurrent tasks (one lock orders the transactions on the one connection).

    A grant row that cannot be read (see :mod:`haasd.store._grants`) is *quarantined*:
    reads give a stand-in grant in ``needs_reconsent`` whose ``last_error`` starts with
    "store row unreadable" and says why, :attr:`unreadable` names the human, and no
    write but a new consent (:meth:`put_grant` with tokens) or :meth:`delete_grant`
    touches the row, which stays as it is for whoever looks into it.
    """

    __slots__ = ("_db", "_path", "_quarantine", "_scopes", "_sealer", "_served")

    def __init__(self, conn: aiosqlite.Connection, sealer: Sealer, path: Path) -> None:
        self._db = Database(conn, path)
        self._sealer = sealer
        self._path = path
        self._served = ServedTimes()
        self._scopes: dict[str, tuple[str, ...]] = {}
        self._quarantine = Quarantine(str(path))

    @classmethod
    async def open(cls, path: Path, sealer: Sealer, *, writer: bool = True) -> Store:
        """Open (creating if absent or empty) the store at ``path``.

        Raises :class:`WrongKeyError`, :class:`StoreCorruptError` or
        :class:`StoreNewerError` without changing a byte of an existing file, and
        :class:`StoreError` if it is read-only, unless the caller only reads
        (``writer=False``).
        """
        return cls(await open_connection(path, sealer, writer=writer), sealer, path)

    @property
    def path(self) -> Path:
        return self._path

    @property
    def unreadable(self) -> frozenset[str]:
        """The humans whose rows were unreadable when last read: quarantined."""
        return self._quarantine.humans

    async def close(self) -> None:
        """Write pending ``last_served_at`` values and close. Idempotent."""
        if not self._db.closed:
            await flush_then_close(self.flush_served, self._db.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- reads ---------------------------------------------------------------------------

    async def get_grant(self, human_id: str, *, warn: bool = True) -> Grant:
        """The grant of ``human_id`` (quarantined if its row is unreadable), or
        :class:`UnknownHumanError`. ``warn``: log a row newly found unreadable."""
        rows = await self._db.fetch(f"{SELECT_GRANTS} WHERE human_id = ?", (human_id,))
        if not rows:
            raise UnknownHumanError(human_id)
        # no await from here on: nothing changes the quarantine in between
        (grant,), unreadable = self._to_grants(rows)
        self._quarantine.read_one(grant.human_id, unreadable, warn=warn)
        return grant

    async def peek_grant(self, human_id: str) -> Grant | None:
        """The grant of ``human_id`` as stored now, even while the grants are being read
        (see :meth:`Database.fetch_beside`), noting nothing; None if there is none or it
        does not open (the read of every grant quarantines it)."""
        rows = await self._db.fetch_beside(f"{SELECT_GRANTS} WHERE human_id = ?", (human_id,))
        grants, unreadable = self._to_grants(rows)
        return None if unreadable or not grants else grants[0]

    async def get_grants(self, human_ids: Sequence[str], *, warn: bool = True) -> list[Grant]:
        """The grants of ``human_ids`` that exist, a few hundred per statement."""
        grants: list[Grant] = []
        for start in range(0, len(human_ids), _IDS_PER_READ):
            some = list(human_ids[start : start + _IDS_PER_READ])
            marks = ", ".join("?" * len(some))
            rows = await self._db.fetch(f"{SELECT_GRANTS} WHERE human_id IN ({marks})", some)
            read, unreadable = self._to_grants(rows)  # no await until the quarantine is set
            self._quarantine.read_some(some, unreadable, warn=warn)
            grants.extend(read)
        return grants

    async def _read(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool, sealed: bool
    ) -> None:
        self._db.check_open()
        async with self._db.lock:  # a consent cannot land between reading and quarantining
            # ~10 µs a row: off the event loop, and a chunk of rows at a time (not every
            # row in memory beside its grant: that was most of a large store's peak RSS)
            loaded = Loaded(self._sealer, self._scopes, self._served.times, take, sealed=sealed)
            sql = f"{SELECT_GRANTS} ORDER BY human_id"
            await self._db.fetch_chunks_locked(sql, loaded.take, LOAD_CHUNK)
            self._quarantine.read_all(loaded.unreadable, warn=warn)

    async def count_grants(self) -> int:
        rows = await self._db.fetch("SELECT count(*) FROM grants")
        return int(rows[0][0])

    # -- writes: one transaction each, committed (synchronous=FULL) before returning ------

    async def put_grant(self, grant: Grant) -> None:
        """Insert or replace the grant of ``grant.human_id``; a consent ends a quarantine.

        A quarantined grant's stand-in (or a copy of it: no tokens) is never written, so
        the row it stands for stays as it is.
        """
        await self.put_grants([grant], what="put grant")

    async def put_grants(self, grants: Iterable[Grant], *, what: str = "put grants") -> None:
        """Insert or replace many grants in a single transaction (as :meth:`put_grant`)."""
        kept = [grant for grant in grants if not is_placeholder(grant)]
        rows = [grant_row(g, self._sealer) for g in kept]
        await self._db.write(PUT_GRANT, rows, what)
        for grant in kept:
            self._quarantine.release(grant.human_id)

    async def delete_grant(self, human_id: str) -> bool:
        """Forget the grant of ``human_id`` (quarantined or not); False if there was none."""
        self._served.forget(human_id)
        sql = "DELETE FROM grants WHERE human_id = ?"
        existed = await self._db.write(sql, [(human_id,)], "delete grant") > 0
        self._quarantine.release(human_id)
        return existed

    async def begin_refresh(self, human_id: str, intent: RefreshIntent) -> None:
        """Record that a refresh of ``human_id`` is about to spend its refresh token.

        Overwrites a left-over intent (from a crash): the caller has judged it by then.
        A quarantined grant has no refresh token to spend: :class:`NeedsReconsentError`.
        """
        self._quarantine.refuse(human_id)
        params = (intent.attempt_id, intent.fingerprint, intent.started_at, human_id)
        await self._db.update(human_id, BEGIN_REFRESH, params, "begin refresh")

    async def finish_refresh(self, grant: Grant, *, attempt_id: str | None = None) -> bool:
        """Store a refresh's outcome and clear the intent, in one transaction.

        Writes the tokens, their expiries, scope and status fields of ``grant``;
        environment, consented_at and last_served_at stay as stored. With
        ``attempt_id``, only if the row still carries that intent: False (nothing
        written) when the grant was replaced or deleted while the refresh was in flight.
        False too for a quarantined grant (or its stand-in): its row is left as it is.
        """
        if grant.human_id in self._quarantine or is_placeholder(grant):
            return False
        params = refresh_row(grant, self._sealer)
        if attempt_id is None:
            await self._db.update(grant.human_id, FINISH_REFRESH, params, "finish refresh")
            return True
        sql = f"{FINISH_REFRESH} AND intent_attempt_id = ?"
        return await self._db.write(sql, [(*params, attempt_id)], "finish refresh") == 1

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
        """Change a grant's status; ``clear_intent`` also ends a refresh that came to nothing.

        A new state re-seals the tokens in the same transaction (the state is bound to
        them); a row that does not open then is quarantined (logged) and left as it is,
        as is an already quarantined row: nothing is written, and no error is raised,
        since the grant in memory is still what it was.
        """
        self._db.check_open()
        if human_id in self._quarantine:
            return
        status = (last_error, consecutive_failures, next_refresh_at, human_id)
        with anyio.CancelScope(shield=True), translate(self._path, "update status"):
            async with self._db.lock, transaction(self._db.conn):
                rows = list(await self._db.conn.execute_fetchall(SELECT_SEALED, (human_id,)))
                if not rows:
                    raise UnknownHumanError(human_id)
                try:
                    tokens = resealed(human_id, rows[0], State(state), self._sealer)
                except (DecryptError, ValueError) as exc:
                    self._quarantine.add({human_id: why_unreadable(exc)}, warn=True)
                    return
                if tokens is None:
                    sql = SET_STATUS_CLEAR if clear_intent else SET_STATUS
                    await self._db.conn.execute(sql, (State(state).value, *status))
                else:
                    sql = SET_STATE_CLEAR if clear_intent else SET_STATE
                    await self._db.conn.execute(sql, (State(state).value, *tokens, *status))

    def mark_served(self, human_id: str, at: float) -> None:
        """Note that ``human_id``'s token was served at ``at``; no I/O.

        Serving is far too frequent for a synced transaction each, so the times wait in
        memory for :meth:`flush_served` (call it periodically; :meth:`close` does). A crash
        loses at most the times since the last flush, which only makes a human look a
        little more dormant than they were. Reads include the pending times.
        """
        self._db.check_open()
        self._served.note(human_id, at)

    def served_at(self, human_id: str) -> float | None:
        """The latest time :meth:`mark_served` noted for ``human_id`` (written or not), or
        None; no I/O. The engine judges a grant dormant by it (``refresh_idle``)."""
        return self._served.get(human_id)

    async def flush_served(self) -> int:
        """Write the ``last_served_at`` times not written yet, in one transaction; how many
        (a quarantined row is left as it is: it was never served, and it is evidence)."""

        async def write(pairs: list[tuple[str, float]]) -> None:
            rows = [(at, human_id) for human_id, at in pairs]
            await self._db.write(SET_SERVED, rows, "write last_served_at")

        return await self._served.flush(write, skip=self._quarantine)

    # -- pending consents (haasd.consent) ------------------------------------------------

    async def add_pending(self, record: PendingRecord, verifier: Secret, *, limit: int) -> bool:
        """Insert a pending consent unless ``limit`` are pending already; whether it was."""
        params = (*pending_row(record, verifier, self._sealer), limit)
        return await self._db.write(ADD_PENDING, [params], "add pending consent") > 0

    async def restore_pending(self, record: PendingRecord, verifier: Secret) -> None:
        """Put back what :meth:`take_pending` took (not counted against the limit)."""
        params = pending_row(record, verifier, self._sealer)
        await self._db.write(RESTORE_PENDING, [params], "restore pending consent")

    async def get_pending(self, state_id: str) -> PendingRecord | None:
        rows = await self._db.fetch(SELECT_PENDING + " WHERE state_id = ?", (state_id,))
        return to_pending(rows[0]) if rows else None

    async def list_pending(self) -> list[PendingRecord]:
        """Every pending consent, the first to expire first."""
        rows = await self._db.fetch(SELECT_PENDING + " ORDER BY expires_at, state_id")
        return [to_pending(row) for row in rows]

    async def next_pending_expiry(self) -> float | None:
        rows = await self._db.fetch("SELECT min(expires_at) FROM pending_consents")
        return None if rows[0][0] is None else float(rows[0][0])

    async def take_pending(self, state_id: str) -> tuple[PendingRecord, Secret] | None:
        """Delete and return a pending consent and its verifier, in one statement: of two
        tasks (or processes) taking the same one, exactly one gets it."""
        rows = await self._db.write_returning(TAKE_PENDING, (state_id,), "take pending consent")
        return to_taken(rows[0], self._sealer) if rows else None

    async def take_expired_pending(self, now: float) -> list[PendingRecord]:
        """Delete and return every pending consent expired at ``now``, in one statement."""
        rows = await self._db.write_returning(TAKE_EXPIRED, (now,), "prune pending consents")
        return sorted((to_pending(row) for row in rows), key=lambda r: r.expires_at)

    # -- maintenance (haasd.maintenance) -------------------------------------------------

    @asynccontextmanager
    async def resealing(self, sealer: Sealer) -> AsyncIterator[aiosqlite.Connection]:
        """One transaction in which the body re-seals every token and verifier under
        ``sealer``; the key check is re-sealed last, then ``COMMIT`` and a checkpoint. From
        then on this store seals with ``sealer``. ``secure_delete`` zeroes the old blobs'
        space. Rolled back if anything raises; under the lock and shielded, as every write.
        The columns to re-seal are :data:`haasd.store.schema.SEALED`.
        """
        self._db.check_open()
        conn, old = self._db.conn, self._sealer
        with anyio.CancelScope(shield=True), translate(self._path, "re-seal"):
            async with self._db.lock:
                await conn.execute("PRAGMA secure_delete = ON")
                async with transaction(conn):
                    yield conn
                    sql = "SELECT value FROM meta WHERE name = ?"
                    check = await scalar(conn, sql, (KEY_CHECK_COLUMN,))
                    text = old.open(check, human_id="", column=KEY_CHECK_COLUMN)
                    blob = sealer.seal(text, human_id="", column=KEY_CHECK_COLUMN)
                    sql = "UPDATE meta SET value = ? WHERE name = ?"
                    await conn.execute(sql, (blob, KEY_CHECK_COLUMN))
                self._sealer = sealer
                await conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")

    # -- internals -----------------------------------------------------------------------

    def _to_grants(self, rows: list[sqlite3.Row]) -> tuple[list[Grant], dict[str, str]]:
        """The grants of ``rows``, stand-ins for the unreadable ones, and those's reasons."""
        return to_grants(rows, self._sealer, self._scopes, self._served.times)
