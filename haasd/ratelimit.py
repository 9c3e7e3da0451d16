"""The request budget: when haasd may send the next request to HaaS, and waiting for it.

The arithmetic — a sliding-window log of the last minute's sends, and the server's word
from ``X-RateLimit-*`` and 429s — is :class:`~haasd.ratewindow.RateWindow`'s (pure, with
the proof that no 60-second window holds more than the plan allows). :class:`RateBudget`
gives it the time from an injected :class:`~haasd.clock.Clock` (``monotonic()`` for
scheduling, ``time()`` only to read the server's epoch ``X-RateLimit-Reset``) and makes
waiters queue.
"""

from __future__ import annotations

from typing import Protocol

import anyio

from haasd.clock import Clock
from haasd.errors import StoreError, TransientAuthError
from haasd.ratewindow import MAX_WAIT, WINDOW, RateWindow

__all__ = ["MAX_WAIT", "WINDOW", "RateBudget", "SharedBudget"]


class SharedBudget(Protocol):
    """The plan's budget as several instances spend it together (the plan's limit is per
    client, not per instance): :class:`haasd.pgstore.PgRate`."""

    async def take(self, capacity: int) -> float:
        """Spend one request of the cluster's ``capacity`` per minute: 0.0 if spent, else
        the seconds until one may go. :class:`StoreError` if the cluster cannot say."""
        ...

    def note_block(self, seconds: float) -> None:
        """Tell the others to send nothing for ``seconds`` (a Retry-After, no requests
        remaining); no I/O, sent in the background."""
        ...

    def blocked_for(self) -> float:
        """Seconds the cluster last said nothing may be sent (0.0: not blocked)."""
        ...

    def members(self) -> int:
        """The live instances sharing the budget (at least 1)."""
        ...


class RateBudget:
    """How many requests may go now, on the plan's budget and the server's word.

    :meth:`acquire` queues waiters first come, first served (an :class:`anyio.Lock`, which
    is fair); :meth:`try_acquire` never waits and does not queue behind them.
    """

    __slots__ = ("_clock", "_lock", "_shared", "_window")

    def __init__(
        self,
        requests_per_minute: int,
        clock: Clock,
        *,
        safety: float = 0.9,
        shared: SharedBudget | None = None,
    ) -> None:
        self._window = RateWindow(requests_per_minute, safety=safety)
        self._clock = clock
        self._lock = anyio.Lock()
        #: in a cluster, the budget all instances spend together (None: this one alone)
        self._shared = shared

    # --- figures for health and metrics ---------------------------------------------

    @property
    def clock(self) -> Clock:
        return self._clock

    @property
    def limit(self) -> int:
        """Requests per minute: the configured plan, or the server's lower limit."""
        return self._window.limit

    @property
    def capacity(self) -> int:
        """Requests haasd allows itself in any window: ``floor(limit * safety)``."""
        return self._window.capacity

    @property
    def instance_capacity(self) -> int:
        """This instance's part of :attr:`capacity` (all of it, unless in a cluster): what
        the on-demand share is reckoned from, so that it holds for the cluster."""
        if self._shared is None:
            return self.capacity
        return max(1, self.capacity // max(1, self._shared.members()))

    @property
    def remaining(self) -> int:
        """About how many requests could go right now."""
        return self._window.remaining(self._clock.monotonic())

    @property
    def blocked_until(self) -> float | None:
        """The monotonic instant before which nothing is sent (a 429, or none remaining),
        here or — in a cluster — as another instance learnt it."""
        now = self._clock.monotonic()
        local = self._window.blocked_until(now)
        cluster = self._shared.blocked_for() if self._shared is not None else 0.0
        if cluster <= 0.0:
            return local
        return max(local or now, now + cluster)

    # --- spending ---------------------------------------------------------------------

    def ready_in(self) -> float:
        """Seconds until a request may go (0.0: now), spending nothing. Waiters already
        queued in :meth:`acquire` go first, so this is a lower bound."""
        now = self._clock.monotonic()
        cluster = self._shared.blocked_for() if self._shared is not None else 0.0
        return max(0.0, self._window.ready_at(now) - now, cluster)

    def try_acquire(self) -> float:
        """0.0 and one request spent if a request may go now; else the seconds to wait."""
        now = self._clock.monotonic()
        ready = self._window.ready_at(now)
        if ready > now:
            return ready - now
        self._window.spend(now)
        return 0.0

    async def acquire(self) -> None:
        """Wait on the clock until a request may go, then spend it. Fair among waiters.

        In a cluster the request is also spent from the cluster's budget; when that
        cannot be read, :class:`TransientAuthError` (nothing was sent)."""
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                ready = self._window.ready_at(now)
                if ready > now:
                    # an absolute deadline: waking exactly there frees the slot (no drift)
                    await self._clock.sleep_until(ready)
                    continue
                wait = await self._take_shared()
                if wait > 0.0:
                    await self._clock.sleep(wait)
                    continue
                self._window.spend(self._clock.monotonic())
                return

    async def _take_shared(self) -> float:
        if self._shared is None:
            return 0.0
        try:
            return await self._shared.take(self.capacity)
        except StoreError as exc:
            raise TransientAuthError(
                "rate_budget_unavailable",
                f"the cluster's rate budget cannot be read ({exc}); nothing was sent",
                retry_after=5.0,
                sent=False,
            ) from exc

    # --- the server's word ----------------------------------------------------------------

    def observe(self, limit: int | None, remaining: int | None, reset_epoch: float | None) -> bool:
        """Take in a reply's ``X-RateLimit-*`` headers (None: header absent).

        Returns True when a value was absurd and was capped or ignored (also logged).
        """
        now, wall = self._clock.monotonic(), self._clock.time()
        capped = self._window.observe(limit, remaining, reset_epoch, now=now, wall=wall)
        self._share_block(now)
        return capped

    def block_for(self, seconds: float) -> bool:
        """Send nothing for ``seconds`` (a 429's Retry-After). True if capped or ignored."""
        now = self._clock.monotonic()
        capped = self._window.block_for(seconds, now=now)
        self._share_block(now)
        return capped

    def _share_block(self, now: float) -> None:
        """What the server just said about waiting, for the other instances too."""
        blocked = self._window.blocked_until(now)
        if self._shared is not None and blocked is not None and blocked > now:
            self._shared.note_block(blocked - now)
