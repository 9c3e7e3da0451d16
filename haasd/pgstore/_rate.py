"""The plan's rate budget, spent by several instances together: :class:`PgRate`.

The plan's limit is per client, not per instance. Every request any instance sends is
first written to ``haasd_rate_log`` by ``haasd_take_rate(capacity)`` — which, under one
transaction-level advisory lock, drops the entries older than a minute, refuses while
``haasd_rate_state.blocked_until`` lies ahead, and counts the rest against the capacity —
so that no 60-second window, on PostgreSQL's clock, holds more than the plan allows
whatever the instances do. What one instance learns from the server (a ``Retry-After``,
``X-RateLimit-Remaining: 0``) is written to ``blocked_until`` within a second and read
back by the others as often, for their admission decisions; the take itself refuses at
once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import anyio
import structlog

from haasd.errors import StoreError
from haasd.pgstore._database import Database

__all__ = ["PgRate"]

_log: Final = structlog.get_logger("haasd.cluster")

TAKE: Final = "SELECT haasd_take_rate(%s)"
BLOCK: Final = (
    "UPDATE haasd_rate_state SET blocked_until = greatest(coalesce(blocked_until, now()),"
    " clock_timestamp() + make_interval(secs => %s)) WHERE id = 1"
)
BLOCKED_FOR: Final = (
    "SELECT greatest(0, extract(epoch FROM blocked_until - clock_timestamp()))"
    " FROM haasd_rate_state WHERE id = 1"
)
#: how often what the server said is shared and read back (seconds)
SYNC_EVERY: Final = 1.0


class PgRate:
    """The :class:`~haasd.ratelimit.SharedBudget` of a PostgreSQL store (see the module)."""

    def __init__(self, db: Database, members: Callable[[], int]) -> None:
        self._db = db
        self._members = members
        self._to_block = 0.0
        #: the cluster's block as last read: seconds, at this local monotonic instant
        self._blocked: tuple[float, float] = (0.0, 0.0)

    async def take(self, capacity: int) -> float:
        rows = await self._db.fetch(TAKE, (capacity,), "spend the rate budget")
        return float(rows[0][0])

    def note_block(self, seconds: float) -> None:
        self._to_block = max(self._to_block, seconds)
        self._blocked = max(self._blocked_now(), seconds), anyio.current_time()

    def blocked_for(self) -> float:
        return self._blocked_now()

    def members(self) -> int:
        return max(1, self._members())

    def _blocked_now(self) -> float:
        seconds, at = self._blocked
        return max(0.0, seconds - (anyio.current_time() - at))

    async def run(self) -> None:
        """Share what this instance learnt, and read what the others did, every second."""
        while True:
            await anyio.sleep(SYNC_EVERY)
            try:
                await self.sync()
            except StoreError as exc:  # the heartbeat reports the database lost
                _log.debug("cannot share the rate budget's state", error=str(exc))

    async def sync(self) -> None:
        """One exchange: write a block noted here, read the cluster's."""
        block, self._to_block = self._to_block, 0.0
        try:
            if block > 0:
                await self._db.execute(BLOCK, (block,), "share a rate block")
            rows = await self._db.fetch(BLOCKED_FOR, (), "read the rate block")
        except BaseException:
            self._to_block = max(self._to_block, block)
            raise
        seconds = float(rows[0][0]) if rows and rows[0][0] is not None else 0.0
        self._blocked = seconds, anyio.current_time()
