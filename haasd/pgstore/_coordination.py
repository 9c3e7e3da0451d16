"""Several haasd instances on one PostgreSQL store: :class:`PgCoordination`.

* **Leases.** A permit to refresh a grant is a row of ``haasd_leases`` — owner and end,
  taken and renewed on PostgreSQL's clock, never an instance's. The holder renews its
  leases with its heartbeat (every third of ``cluster.lease``) and trusts one only until
  the lease's length, less a margin, has passed on its *own* clock since the
  last renewal that succeeded (:func:`local_now`: it runs on while the host sleeps): an
  instance cut off from the database, paused or suspended stops sending before anyone
  else may take the lease (:meth:`PgCoordination.held`).
* **Fencing.** A refresh begins only on the grant's version this instance read and only
  while its lease is live (:data:`~haasd.pgstore._sql.BEGIN_LEASED`); its result is
  written only while the row still carries that refresh's intent. So a holder that comes
  back from a pause can never overwrite a newer token, and the next holder finds a dead
  holder's intent and recovers it as a restarted haasd does.
* **Spread.** Each grant has one preferred live instance (rendezvous hashing over the
  heartbeats); the others schedule it :meth:`~PgCoordination.defer` later, as a fallback
  that only runs if the preferred one did not refresh it.
* **Changes.** A trigger NOTIFYs ``haasd_grants`` with the grant's new version on every
  change others must see; a released lease NOTIFYs ``haasd_leases``. One connection of
  this instance LISTENs; after any reconnect the engine re-reads every grant, so a lost
  notification costs one resync.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
import uuid
from collections.abc import Sequence
from typing import Any, Final

import anyio
import psycopg
import structlog
from anyio.abc import TaskStatus

from haasd.coordination import Instance, Listener, Permit
from haasd.errors import StoreError
from haasd.pgstore._rate import PgRate
from haasd.pgstore._store import PgStore

__all__ = ["PgCoordination"]

_log: Final = structlog.get_logger("haasd.cluster")

ACQUIRE: Final = (
    "INSERT INTO haasd_leases AS l (human_id, owner, expires_at)"
    " VALUES (%s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (human_id) DO UPDATE SET owner = EXCLUDED.owner,"
    " expires_at = EXCLUDED.expires_at WHERE l.expires_at <= now() OR l.owner = EXCLUDED.owner"
    " RETURNING extract(epoch FROM expires_at)"
)
RELEASE: Final = (
    "WITH gone AS (DELETE FROM haasd_leases WHERE human_id = %s AND owner = %s"
    " RETURNING human_id) SELECT pg_notify('haasd_leases', human_id) FROM gone"
)
RELEASE_ALL: Final = "DELETE FROM haasd_leases WHERE owner = %s"
BEAT: Final = (
    "INSERT INTO haasd_instances AS i (instance_id, host, pid, expires_at)"
    " VALUES (%s, %s, %s, now() + make_interval(secs => %s))"
    " ON CONFLICT (instance_id) DO UPDATE SET heartbeat_at = now(),"
    " expires_at = EXCLUDED.expires_at"
)
RENEW: Final = (
    "UPDATE haasd_leases SET expires_at = now() + make_interval(secs => %s)"
    " WHERE owner = %s AND human_id = ANY(%s) AND expires_at > now() RETURNING human_id"
)
LIVE: Final = (
    "SELECT i.instance_id, i.host, i.pid, extract(epoch FROM now() - i.heartbeat_at),"
    " extract(epoch FROM now() - i.started_at), (SELECT count(*) FROM haasd_leases AS l"
    " WHERE l.owner = i.instance_id AND l.expires_at > now())"
    " FROM haasd_instances AS i WHERE i.expires_at > now() ORDER BY i.instance_id"
)
TIDY: Final = (
    "DELETE FROM haasd_instances WHERE expires_at < now() - interval '1 day'",
    "DELETE FROM haasd_leases WHERE expires_at < now() - interval '1 minute'",
)
LEAVE: Final = "DELETE FROM haasd_instances WHERE instance_id = %s"

#: how often a heartbeat also removes instances and leases long dead (seconds)
TIDY_EVERY: Final = 600.0
#: how long a reconnect waits at most between tries
RECONNECT_MAX: Final = 5.0


def local_now() -> float:
    """This host's clock for trusting a lease: CLOCK_BOOTTIME where there is one, which
    — unlike the monotonic clock — goes on while the host is suspended, so a host that
    wakes up does not think a lease it held before still holds."""
    boottime = getattr(time, "CLOCK_BOOTTIME", None)
    if boottime is None:  # pragma: no cover - not Linux
        return time.monotonic()
    return time.clock_gettime(boottime)


def new_instance_id() -> str:
    """``host/pid/random``: unique across restarts, readable in ``haasd status``."""
    return f"{socket.gethostname()}/{os.getpid()}/{uuid.uuid4().hex[:6]}"


def preferred(instances: Sequence[str], human_id: str) -> str | None:
    """The instance a grant's scheduled refreshes go to: the highest rendezvous hash, so
    that one instance more or less moves only its own share of grants."""
    if not instances:
        return None

    def weight(instance_id: str) -> bytes:
        return hashlib.blake2b(f"{instance_id}\0{human_id}".encode(), digest_size=8).digest()

    return max(instances, key=weight)


class PgCoordination:
    """Leases, heartbeats and change notices for one instance (see the module)."""

    shared = True

    def __init__(
        self,
        store: PgStore,
        *,
        lease: float,
        instance_id: str | None = None,
        join_within: float = 0.0,
    ) -> None:
        self._store = store
        #: how long joining (the first heartbeat, the first LISTEN) is tried again for: the
        #: database may restart while this instance starts (``store.connect_timeout``)
        self.join_within = join_within
        self._join_by = 0.0
        self._db = store.database
        self.lease = lease
        #: how long before a lease's end (local, monotonic) this instance stops using it
        self.margin = max(1.0, lease / 3)
        self.instance_id = instance_id or new_instance_id()
        store.owner = self.instance_id
        self._listeners: list[Listener] = []
        #: held leases: human id → local monotonic instant until which it is surely ours
        self._leases: dict[str, float] = {}
        self._live: tuple[Instance, ...] = ()
        self._live_ids: tuple[str, ...] = ()
        self._lost: str | None = None
        self._lost_at: float | None = None
        self._tidied = -float("inf")
        #: the rate budget all instances spend together
        self.rate = PgRate(self._db, members=lambda: len(self._live_ids))

    # -- the Coordination protocol --------------------------------------------------------

    @property
    def wait(self) -> float:
        return self.lease

    async def acquire(self, human_id: str) -> Permit | None:
        sent = local_now()
        rows = await self._db.returning(
            ACQUIRE, (human_id, self.instance_id, self.lease), "take a lease"
        )
        if not rows:
            return None
        self._leases[human_id] = sent + self.lease - self.margin
        return Permit(human_id, self.instance_id, float(rows[0][0]))

    def held(self, permit: Permit) -> bool:
        until = self._leases.get(permit.human_id)
        return until is not None and local_now() < until

    async def release(self, permit: Permit) -> None:
        if self._leases.pop(permit.human_id, None) is None:
            return
        try:
            await self._db.fetch(RELEASE, (permit.human_id, self.instance_id), "release a lease")
        except StoreError as exc:  # it ends by itself within cluster.lease
            _log.info("could not release a lease; it ends by itself", error=str(exc))

    async def publish(self, human_id: str) -> None:
        """Nothing to do: the store's trigger tells the others of every change."""

    def subscribe(self, listener: Listener) -> None:
        self._listeners.append(listener)

    def defer(self, human_id: str) -> float:
        chosen = preferred(self._live_ids, human_id)
        return 0.0 if chosen in (None, self.instance_id) else 2 * self.lease

    def problem(self) -> str | None:
        if self._lost is None or self._lost_at is None:
            return None
        for_ = local_now() - self._lost_at
        return (
            f"cluster: the store {self._db.where} is unreachable for {for_:.0f}s"
            f" ({self._lost}): not refreshing, serving the tokens in memory"
        )

    def instances(self) -> Sequence[Instance]:
        return self._live

    # -- running --------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Join (heartbeat), listen, and keep both going until cancelled; then leave."""
        self._join_by = anyio.current_time() + self.join_within
        await self._join()
        try:
            async with anyio.create_task_group() as tg:
                await tg.start(self._listen)
                tg.start_soon(self._beat_loop)
                tg.start_soon(self.rate.run)
                task_status.started()
        finally:
            with anyio.CancelScope(shield=True):
                await self._leave()

    async def _join(self) -> None:
        """The first heartbeat, tried again until ``join_within`` has passed."""
        delay = 0.5
        while True:
            try:
                return await self._beat()
            except StoreError as exc:
                if anyio.current_time() + delay > self._join_by:
                    raise
                self._lose(str(exc))
            await anyio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    async def _beat_loop(self) -> None:
        while True:
            await anyio.sleep(self.lease / 3)
            try:
                await self._beat()
            except StoreError as exc:
                self._lose(str(exc))

    async def _beat(self) -> None:
        """Say this instance lives, renew its leases, and read who else lives."""
        sent = local_now()
        held = list(self._leases)
        async with self._db.transaction("heartbeat") as conn:
            host, pid = socket.gethostname(), os.getpid()
            await conn.execute(BEAT, (self.instance_id, host, pid, self.lease))
            renew = (self.lease, self.instance_id, held)
            renewed = await (await conn.execute(RENEW, renew)).fetchall()
            live = await (await conn.execute(LIVE)).fetchall()
            if sent - self._tidied > TIDY_EVERY:
                for statement in TIDY:
                    await conn.execute(statement)
                self._tidied = sent
        for (human_id,) in renewed:
            if human_id in self._leases:
                self._leases[human_id] = sent + self.lease - self.margin
        self._found(live)

    def _found(self, rows: list[tuple[Any, ...]]) -> None:
        self._live = tuple(
            Instance(str(r[0]), str(r[1]), int(r[2]), float(r[3]), float(r[4]), int(r[5]))
            for r in rows
        )
        ids = tuple(i.instance_id for i in self._live)
        if ids != self._live_ids:
            if self._live_ids:
                _log.info("cluster changed", instances=list(ids))
            self._live_ids = ids
            for listener in self._listeners:
                listener.replan()
        if self._lost is not None:
            _log.info("cluster: the store is reachable again", store=self._db.where)
            self._lost = self._lost_at = None

    def _lose(self, reason: str) -> None:
        if self._lost is None:
            _log.error(
                "cluster: the store is unreachable: not refreshing until it is back",
                store=self._db.where,
                error=reason,
            )
            self._lost_at = local_now()
        self._lost = reason

    async def _listen(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """LISTEN on a connection of its own; reconnect (then resync) when it breaks."""
        delay, first = 0.5, True
        while True:
            try:
                conn = await self._db.dedicated("listen")
                async with conn:
                    await conn.execute("LISTEN haasd_grants")
                    await conn.execute("LISTEN haasd_leases")
                    if first:
                        task_status.started()
                    else:
                        _log.info("cluster: listening again; re-reading every grant")
                        for listener in self._listeners:
                            listener.resync()
                    first, delay = False, 0.5
                    async for note in conn.notifies():
                        self._heard(note.channel, note.payload)
            except (StoreError, psycopg.Error, OSError) as exc:
                self._lose(str(exc) if isinstance(exc, StoreError) else type(exc).__name__)
                if first and anyio.current_time() + delay > self._join_by:
                    raise StoreError(f"store {self._db.where}: cannot listen: {exc}") from exc
            await anyio.sleep(delay)
            delay = min(RECONNECT_MAX, delay * 2)

    def _heard(self, channel: str, payload: str) -> None:
        human_id, _, version = payload.partition(" ")
        if channel == "haasd_leases":
            for listener in self._listeners:
                listener.released(human_id)
            return
        if version.isdigit():
            known = self._store.version_of(human_id)
            if known is not None and known == int(version):
                return  # this instance's own write, or already read
        for listener in self._listeners:
            listener.changed(human_id)

    async def _leave(self) -> None:
        """Give back every lease and the heartbeat row: the others take over at once."""
        self._leases.clear()
        try:
            async with self._db.transaction("leave the cluster") as conn:
                await conn.execute(RELEASE_ALL, (self.instance_id,))
                await conn.execute(LEAVE, (self.instance_id,))
        except StoreError as exc:
            _log.info("could not leave the cluster cleanly", error=str(exc))
