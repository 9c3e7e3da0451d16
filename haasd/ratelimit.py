"""The request budget: when haasd may send the next request to HaaS, and waiting for it.

The arithmetic — a sliding-window log of the last minute's sends, and the server's word
from ``X-RateLimit-*`` and 429s — is :class:`~haasd.ratewindow.RateWindow`'s (pure, with
the proof that no 60-second window holds more than the plan allows). :class:`RateBudget`
gives it the time from an injected :class:`~haasd.clock.Clock` (``monotonic()`` for
scheduling, ``time()`` only to read the server's epoch ``X-RateLimit-Reset``) and makes
waiters queue.
"""

from __future__ import annotations

import anyio

from haasd.clock import Clock
from haasd.ratewindow import MAX_WAIT, WINDOW, RateWindow

__all__ = ["MAX_WAIT", "WINDOW", "RateBudget"]


class RateBudget:
    """How many requests may go now, on the plan's budget and the server's word.

    :meth:`acquire` queues waiters first come, first served (an :class:`anyio.Lock`, which
    is fair); :meth:`try_acquire` never waits and does not queue behind them.
    """

    __slots__ = ("_clock", "_lock", "_window")

    def __init__(self, requests_per_minute: int, clock: Clock, *, safety: float = 0.9) -> None:
        self._window = RateWindow(requests_per_minute, safety=safety)
        self._clock = clock
        self._lock = anyio.Lock()

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
    def remaining(self) -> int:
        """About how many requests could go right now."""
        return self._window.remaining(self._clock.monotonic())

    @property
    def blocked_until(self) -> float | None:
        """The monotonic instant before which nothing is sent (a 429, or none remaining)."""
        return self._window.blocked_until(self._clock.monotonic())

    # --- spending ---------------------------------------------------------------------

    def ready_in(self) -> float:
        """Seconds until a request may go (0.0: now), spending nothing. Waiters already
        queued in :meth:`acquire` go first, so this is a lower bound."""
        now = self._clock.monotonic()
        return max(0.0, self._window.ready_at(now) - now)

    def try_acquire(self) -> float:
        """0.0 and one request spent if a request may go now; else the seconds to wait."""
        now = self._clock.monotonic()
        ready = self._window.ready_at(now)
        if ready > now:
            return ready - now
        self._window.spend(now)
        return 0.0

    async def acquire(self) -> None:
        """Wait on the clock until a request may go, then spend it. Fair among waiters."""
        async with self._lock:
            while True:
                now = self._clock.monotonic()
                ready = self._window.ready_at(now)
                if ready <= now:
                    self._window.spend(now)
                    return
                # an absolute deadline: waking exactly there frees the slot (no float drift)
                await self._clock.sleep_until(ready)

    # --- the server's word ----------------------------------------------------------------

    def observe(self, limit: int | None, remaining: int | None, reset_epoch: float | None) -> bool:
        """Take in a reply's ``X-RateLimit-*`` headers (None: header absent).

        Returns True when a value was absurd and was capped or ignored (also logged).
        """
        now, wall = self._clock.monotonic(), self._clock.time()
        return self._window.observe(limit, remaining, reset_epoch, now=now, wall=wall)

    def block_for(self, seconds: float) -> bool:
        """Send nothing for ``seconds`` (a 429's Retry-After). True if capped or ignored."""
        return self._window.block_for(seconds, now=self._clock.monotonic())
