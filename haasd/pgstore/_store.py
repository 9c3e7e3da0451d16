"""The :class:`PgStore`: the GrantStore protocol on PostgreSQL, through a bounded pool."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Final, Self

import anyio
import structlog

from haasd.crypto import Sealer
from haasd.errors import DecryptError, FencedError, UnknownHumanError
from haasd.grantpack import Sealed
from haasd.grants import Grant, RefreshIntent, State
from haasd.pgstore import _sql as sql
from haasd.pgstore._database import POOL_SIZE, TIMEOUT, Database, Row
from haasd.pgstore._open import prepare
from haasd.pgstore._versions import Versions
from haasd.secret import Secret
from haasd.store._books import Quarantine, ServedTimes, flush_then_close
from haasd.store._grants import (
    LOAD_CHUNK,
    grant_row,
    is_placeholder,
    refresh_row,
    resealed,
    to_grants,
    why_unreadable,
)
from haasd.store._pending import PendingRecord, pending_row, to_pending, to_taken
from haasd.store._reading import Loaded, Reads

_log: Final = structlog.get_logger("haasd.pgstore")
#: served times written per statement (a few tens of kB of parameters)
SERVED_PER_STATEMENT: Final = 1_000


class PgStore(Reads):
    """Grants and pending consents in PostgreSQL, sealed as in SQLite (see the package)."""

    def __init__(self, db: Database, sealer: Sealer) -> None:
        self._db = db
        self._sealer = sealer
        self._scopes: dict[str, tuple[str, ...]] = {}
        self._served = ServedTimes()
        self._quarantine = Quarantine(db.where)
        #: each grant's version as this instance last read or wrote it
        self._versions = Versions()
        #: why a write PostgreSQL calls done may not be durable (None: it is)
        self.durability: str | None = None
        #: this instance's name in a cluster (haasd.pgstore._coordination): a refresh
        #: then begins only on the version read and under this instance's lease
        self.owner: str | None = None

    @classmethod
    async def open(
        cls, url: str, sealer: Sealer, *, password: Secret | None = None,
        pool_size: int = POOL_SIZE, statement_timeout: float = TIMEOUT,
    ) -> PgStore:  # fmt: skip
        """Connect to ``url``, check the key and migrate (see :mod:`haasd.pgstore._open`).

        Raises :class:`WrongKeyError` or :class:`StoreNewerError` without writing
        anything, :class:`StoreError` when the database cannot be reached.
        """
        db = await Database.connect(
            url, password=password, size=pool_size, statement_timeout=statement_timeout
        )
        try:
            await prepare(db, sealer)
        except BaseException:
            with anyio.CancelScope(shield=True):
                await db.close()
            raise
        store = cls(db, sealer)
        store.durability = await _durability(db)
        if store.durability is not None:
            _log.warning(store.durability, store=db.where)
        return store

    @property
    def where(self) -> str:
        """The database, as messages name it (no password)."""
        return self._db.where

    @property
    def database(self) -> Database:
        """The pool (the cluster's coordination shares it)."""
        return self._db

    @property
    def unreadable(self) -> frozenset[str]:
        return self._quarantine.humans

    def version_of(self, human_id: str) -> int | None:
        """The grant's version as this instance last read or wrote it (None: unknown)."""
        return self._versions.get(human_id)

    async def close(self) -> None:
        """Write the served times not written yet, and close the pool. Idempotent."""
        if not self._db.closed:
            await flush_then_close(self.flush_served, self._db.close)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    # -- grants ---------------------------------------------------------------------------

    async def get_grant(self, human_id: str, *, warn: bool = True) -> Grant:
        rows = await self._db.fetch(f"{sql.SELECT_VERSIONED} WHERE human_id = %s", (human_id,))
        if not rows:
            self._versions.pop(human_id)
            raise UnknownHumanError(human_id)
        (grant,), unreadable = self._to_grants(rows)
        self._quarantine.read_one(grant.human_id, unreadable, warn=warn)
        return grant

    async def peek_grant(self, human_id: str) -> Grant | None:
        """The grant of ``human_id`` as stored now (a connection of the pool beside the one
        reading every grant), noting nothing — not even its version; None if there is
        none or it does not open."""
        rows = await self._db.fetch(f"{sql.SELECT_VERSIONED} WHERE human_id = %s", (human_id,))
        unversioned = [row[:-1] for row in rows]
        grants, unreadable = to_grants(unversioned, self._sealer, self._scopes, self._served.times)
        return None if unreadable or not grants else grants[0]

    async def get_grants(self, human_ids: Sequence[str], *, warn: bool = True) -> list[Grant]:
        """The grants of ``human_ids`` that exist, in one statement (``= ANY``)."""
        ids = list(human_ids)
        rows = await self._db.fetch(f"{sql.SELECT_VERSIONED} WHERE human_id = ANY(%s)", (ids,))
        found = {row[0] for row in rows}
        for human_id in ids:
            if human_id not in found:
                self._versions.pop(human_id)
        grants, unreadable = self._to_grants(rows)
        self._quarantine.read_some(ids, unreadable, warn=warn)
        return grants

    async def _read(
        self, take: Callable[[list[Grant | Sealed]], None], *, warn: bool, sealed: bool
    ) -> None:
        """Every grant, ordered by human id, read in one transaction (one snapshot) through
        a server-side cursor :data:`LOAD_CHUNK` rows at a time, each chunk turned into
        grants in a worker thread: never every row in memory beside its grant (all of
        them at once were most of a large store's peak RSS)."""
        self._versions.restart()
        loaded = Loaded(self._sealer, self._scopes, self._served.times, take, sealed=sealed)
        query = f'{sql.SELECT_VERSIONED} ORDER BY human_id COLLATE "C"'
        async with self._db.transaction("read grants") as conn:
            cursor = conn.cursor(name="haasd_list_grants")  # a named cursor: server-side
            await cursor.execute(query)
            while rows := await cursor.fetchmany(LOAD_CHUNK):
                await anyio.to_thread.run_sync(loaded.take, self._unversioned(rows))
            await cursor.close()
        self._quarantine.read_all(loaded.unreadable, warn=warn)

    async def put_grant(self, grant: Grant) -> None:
        await self.put_grants([grant], what="put grant")

    async def put_grants(self, grants: Iterable[Grant], *, what: str = "put grants") -> None:
        kept = [grant for grant in grants if not is_placeholder(grant)]
        rows = [grant_row(g, self._sealer) for g in kept]
        if len(rows) == 1:
            (version,), *_ = await self._db.returning(sql.PUT_GRANT, rows[0], what)
            self._versions.put(kept[0].human_id, version)
        else:
            await self._db.execute_many(sql.PUT_GRANT, rows, what)
        for grant in kept:
            self._quarantine.release(grant.human_id)

    async def delete_grant(self, human_id: str) -> bool:
        self._served.forget(human_id)
        changed = await self._db.execute(
            "DELETE FROM grants WHERE human_id = %s", (human_id,), "delete grant"
        )
        self._quarantine.release(human_id)
        self._versions.pop(human_id)
        return changed > 0

    async def begin_refresh(self, human_id: str, intent: RefreshIntent) -> None:
        self._quarantine.refuse(human_id)
        params = (intent.attempt_id, intent.fingerprint, intent.started_at, human_id)
        if self.owner is None:
            if await self._db.execute(sql.BEGIN_REFRESH, params, "begin refresh") == 0:
                raise UnknownHumanError(human_id)
            return
        known = self._versions.get(human_id)
        leased = (*params, -1 if known is None else known, self.owner)
        rows = await self._db.returning(sql.BEGIN_LEASED, leased, "begin refresh")
        if not rows:
            raise FencedError(
                f"the grant of {human_id} changed since this instance read it, or its"
                " lease ended: the refresh did not begin"
            )
        self._versions.put(human_id, rows[0][0])

    async def finish_refresh(self, grant: Grant, *, attempt_id: str | None = None) -> bool:
        """Write a refresh's outcome; with ``attempt_id`` fenced on the row's intent
        (``... WHERE human_id = $1 AND intent_attempt_id = $2``): one statement."""
        if grant.human_id in self._quarantine or is_placeholder(grant):
            return False
        params = refresh_row(grant, self._sealer)
        if attempt_id is None:
            if await self._db.execute(sql.FINISH_REFRESH, params, "finish refresh") == 0:
                raise UnknownHumanError(grant.human_id)
            return True
        fenced = (*params, attempt_id)
        rows = await self._db.returning(sql.FINISH_FENCED, fenced, "finish refresh")
        if rows:
            self._versions.put(grant.human_id, rows[0][0])
        return bool(rows)

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
        """As :meth:`haasd.store.Store.update_status`: a new state re-seals the tokens in
        the same transaction, the row locked meanwhile."""
        if human_id in self._quarantine:
            return
        status = (last_error, consecutive_failures, next_refresh_at, human_id)
        async with self._db.transaction("update status") as conn:
            row = await (await conn.execute(sql.SELECT_SEALED, (human_id,))).fetchone()
            if row is None:
                raise UnknownHumanError(human_id)
            try:
                tokens = resealed(human_id, row, State(state), self._sealer)
            except (DecryptError, ValueError) as exc:
                self._quarantine.add({human_id: why_unreadable(exc)}, warn=True)
                return
            if tokens is None:
                statement = sql.status_sql(sql.SET_STATUS, clear_intent=clear_intent)
                cursor = await conn.execute(statement, (State(state).value, *status))
            else:
                statement = sql.status_sql(sql.SET_STATE, clear_intent=clear_intent)
                cursor = await conn.execute(statement, (State(state).value, *tokens, *status))
            written = await cursor.fetchone()
            if written is not None:
                self._versions.put(human_id, written[0])

    # -- served times ---------------------------------------------------------------------

    def mark_served(self, human_id: str, at: float) -> None:
        self._db.check_open()
        self._served.note(human_id, at)

    def served_at(self, human_id: str) -> float | None:
        return self._served.get(human_id)

    async def flush_served(self) -> int:
        """Write the served times noted since the last flush, :data:`SERVED_PER_STATEMENT`
        at a time; how many. (One statement of 100,000 grew the pooled connections'
        buffers, which libpq keeps at their largest, by 10 MB and more for good.)"""

        async def write(pairs: list[tuple[str, float]]) -> None:
            for start in range(0, len(pairs), SERVED_PER_STATEMENT):
                part = pairs[start : start + SERVED_PER_STATEMENT]
                humans, times = [h for h, _ in part], [at for _, at in part]
                await self._db.execute(sql.SET_SERVED, (humans, times), "write last_served_at")

        return await self._served.flush(write, skip=self._quarantine)

    # -- pending consents -----------------------------------------------------------------

    async def add_pending(self, record: PendingRecord, verifier: Secret, *, limit: int) -> bool:
        """Insert unless ``limit`` are pending: under a transaction-level advisory lock, so
        the bound holds across instances."""
        params = (*pending_row(record, verifier, self._sealer), limit)
        async with self._db.transaction("add pending consent") as conn:
            await conn.execute("SELECT pg_advisory_xact_lock(%s)", (sql.PENDING_LOCK,))
            return (await conn.execute(sql.ADD_PENDING, params)).rowcount > 0

    async def restore_pending(self, record: PendingRecord, verifier: Secret) -> None:
        params = pending_row(record, verifier, self._sealer)
        await self._db.execute(sql.RESTORE_PENDING, params, "restore pending consent")

    async def get_pending(self, state_id: str) -> PendingRecord | None:
        rows = await self._db.fetch(f"{sql.SELECT_PENDING} WHERE state_id = %s", (state_id,))
        return to_pending(rows[0]) if rows else None

    async def list_pending(self) -> list[PendingRecord]:
        order = ' ORDER BY expires_at, state_id COLLATE "C"'
        return [to_pending(row) for row in await self._db.fetch(sql.SELECT_PENDING + order)]

    async def next_pending_expiry(self) -> float | None:
        rows = await self._db.fetch("SELECT min(expires_at) FROM pending_consents")
        return None if rows[0][0] is None else float(rows[0][0])

    async def take_pending(self, state_id: str) -> tuple[PendingRecord, Secret] | None:
        """``DELETE ... RETURNING``: of two instances taking the same one, one gets it."""
        rows = await self._db.returning(sql.TAKE_PENDING, (state_id,), "take pending consent")
        return to_taken(rows[0], self._sealer) if rows else None

    async def take_expired_pending(self, now: float) -> list[PendingRecord]:
        rows = await self._db.returning(sql.TAKE_EXPIRED, (now,), "prune pending consents")
        return sorted((to_pending(row) for row in rows), key=lambda r: r.expires_at)

    # -- internals ------------------------------------------------------------------------

    def _to_grants(self, rows: list[Row]) -> tuple[list[Grant], dict[str, str]]:
        """Grants of :data:`~haasd.pgstore._sql.SELECT_VERSIONED` rows; notes the versions."""
        return to_grants(self._unversioned(rows), self._sealer, self._scopes, self._served.times)

    def _unversioned(self, rows: list[Row]) -> list[Row]:
        """:data:`~haasd.pgstore._sql.SELECT_VERSIONED` rows without their trailing
        ``version``, which is noted (the one place the versions read are kept)."""
        read = self._versions.read
        for row in rows:
            read(row[0], row[-1])
        return [row[:-1] for row in rows]


async def _durability(db: Database) -> str | None:
    """A warning when ``synchronous_commit`` lets PostgreSQL report a commit before it is
    on disk: a crash of the database could then lose a rotated refresh token haasd was
    told was written."""
    rows = await db.fetch("SHOW synchronous_commit", (), "read synchronous_commit")
    if rows and rows[0][0] == "off":
        return (
            "synchronous_commit is off for the store's database: a database crash can lose"
            " a rotated refresh token haasd was told was written; set it to on"
        )
    return None
