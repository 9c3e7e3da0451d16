"""The request budget's arithmetic: when the next request to HaaS may go. Pure.

No I/O and no clock: every method takes the instant. :class:`haasd.ratelimit.RateBudget`
reads the clock, waits on it and queues the waiters.

Why a sliding-window log, not a token bucket
--------------------------------------------
The promise is *no 60-second window ever holds more than the plan's requests per
minute*. A token bucket of capacity ``C`` refilling ``N`` per minute admits ``C + N`` in
one window (a full bucket, then the refill), so keeping the promise would mean
under-spending. The log keeps the send instants of the last 60 seconds and admits a
request at ``t`` only while fewer than ``capacity`` of them lie in ``(t - 60, t]``.

Proof: take any window ``[a, a + 60)`` and the last request ``t`` admitted in it. Send
instants are read from a monotonic clock in admission order, so every other request of
that window was admitted before ``t`` and lies in ``[a, t]``, inside ``(t - 60, t]``:
there were fewer than ``capacity`` of them when ``t`` was admitted, so the window holds
at most ``capacity``. Memory is ``capacity`` floats (at most 1000, the Enterprise plan).

``capacity = floor(limit * safety)`` (``safety`` 0.9 by default) leaves headroom for what
the proof cannot see: latency moving requests across the server's own window boundaries,
clocks that disagree, and other clients spending the same plan.

The server's word
-----------------
:meth:`RateWindow.observe` reads ``X-RateLimit-Limit`` / ``-Remaining`` / ``-Reset`` from
every answer. A lower limit than configured lowers ``capacity``; fewer remaining than we
would allow is trusted until the reset (each request sent counts one down), so haasd slows
down before the server must say 429; none remaining blocks until the reset.
:meth:`RateWindow.block_for` records a 429's ``Retry-After``: nothing is sent inside it.
Absurd values (a reset or wait beyond :data:`MAX_WAIT`, negative or non-finite values)
are capped or ignored, logged, and reported by the return value.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Final

import structlog

__all__ = ["MAX_WAIT", "WINDOW", "RateWindow"]

#: The length of the plan's window, in seconds ("requests per minute").
WINDOW: Final = 60.0
#: The longest the server can make us wait; longer values are capped (and logged).
MAX_WAIT: Final = 3600.0
#: How far a reset instant may lie in the past before it is absurd rather than clock skew.
_SKEW: Final = 5.0
#: A reset that is due (or just past, by skew) still holds us back this long.
_MIN_RESET: Final = 1.0
_MAX_LIMIT: Final = 1_000_000

_log = structlog.get_logger(__name__)


class RateWindow:
    """How many requests may go at an instant, on the plan's budget and the server's word.

    Every method takes the monotonic instant ``now`` (and :meth:`observe` the wall-clock
    one too): the window reads no clock and never waits.
    """

    __slots__ = (
        "_blocked_until",
        "_capacity",
        "_configured",
        "_limit",
        "_safety",
        "_sent",
        "_server",
    )

    def __init__(self, requests_per_minute: int, *, safety: float = 0.9) -> None:
        if isinstance(requests_per_minute, bool) or not isinstance(requests_per_minute, int):
            raise TypeError("requests_per_minute must be an int")
        if requests_per_minute < 1:
            raise ValueError("requests_per_minute must be at least 1")
        if not 0.0 < safety <= 1.0:
            raise ValueError("safety must be in (0, 1]")
        self._configured = requests_per_minute
        self._safety = safety
        self._limit = requests_per_minute
        self._capacity = max(1, math.floor(requests_per_minute * safety))
        #: monotonic send instants of the last WINDOW seconds, oldest first
        self._sent: deque[float] = deque()
        #: the server's word: (requests remaining, monotonic instant of its reset)
        self._server: tuple[int, float] | None = None
        self._blocked_until: float | None = None

    # --- figures for health and metrics ---------------------------------------------

    @property
    def limit(self) -> int:
        """Requests per minute: the configured plan, or the server's lower limit."""
        return self._limit

    @property
    def capacity(self) -> int:
        """Requests haasd allows itself in any window: ``floor(limit * safety)``."""
        return self._capacity

    def remaining(self, now: float) -> int:
        """About how many requests could go at ``now``."""
        self._expire(now)
        if self._blocked_until is not None:
            return 0
        left = self._capacity - len(self._sent)
        if self._server is not None:
            left = min(left, self._server[0])
        return max(0, left)

    def blocked_until(self, now: float) -> float | None:
        """The monotonic instant before which nothing is sent (a 429, or none remaining)."""
        self._expire(now)
        blocks = [self._blocked_until] if self._blocked_until is not None else []
        if self._server is not None and self._server[0] <= 0:
            blocks.append(self._server[1])
        return max(blocks, default=None)

    # --- spending ---------------------------------------------------------------------

    def _expire(self, now: float) -> None:
        sent = self._sent
        while sent and sent[0] + WINDOW <= now:
            sent.popleft()
        if self._server is not None and self._server[1] <= now:
            self._server = None
        if self._blocked_until is not None and self._blocked_until <= now:
            self._blocked_until = None

    def ready_at(self, now: float) -> float:
        """The first instant from ``now`` at which a request may go (``now`` itself: now)."""
        self._expire(now)
        ready = now
        if self._blocked_until is not None:
            ready = max(ready, self._blocked_until)
        if self._server is not None and self._server[0] <= 0:
            ready = max(ready, self._server[1])
        excess = len(self._sent) - self._capacity
        if excess >= 0:
            # once sent[excess] leaves the window, capacity - 1 remain in it
            ready = max(ready, self._sent[excess] + WINDOW)
        return ready

    def spend(self, now: float) -> None:
        """Count a request sent at ``now`` (the caller saw ``ready_at(now) <= now``)."""
        self._sent.append(now)
        if self._server is not None:
            self._server = (self._server[0] - 1, self._server[1])

    # --- the server's word ----------------------------------------------------------------

    def observe(
        self,
        limit: int | None,
        remaining: int | None,
        reset_epoch: float | None,
        *,
        now: float,
        wall: float,
    ) -> bool:
        """Take in a reply's ``X-RateLimit-*`` headers (None: header absent), at the
        monotonic instant ``now``, which is ``wall`` on the wall clock (the reset is an epoch).

        Returns True when a value was absurd and was capped or ignored (also logged).
        """
        self._expire(now)
        absurd = False
        if limit is not None:
            if 1 <= limit <= _MAX_LIMIT:
                self._set_limit(min(limit, self._configured))
            else:
                absurd = _report("limit", limit, "ignored")
        reset_at: float | None = None
        if reset_epoch is not None:
            delta = reset_epoch - wall
            if not math.isfinite(delta) or delta < -_SKEW:
                absurd = _report("reset", reset_epoch, f"ignored; assuming {WINDOW:g}s")
            elif delta > MAX_WAIT:
                absurd = _report("reset", reset_epoch, f"capped at {MAX_WAIT:g}s from now")
                reset_at = now + MAX_WAIT
            else:
                reset_at = now + max(delta, _MIN_RESET)
        if remaining is not None:
            if remaining < 0:
                absurd = _report("remaining", remaining, "taken as 0")
                remaining = 0
            self._trust(remaining, now + WINDOW if reset_at is None else reset_at)
        return absurd

    def _set_limit(self, limit: int) -> None:
        if limit != self._limit:
            if limit < self._configured:
                _log.warning(
                    "rate_limit.server_limit_lower",
                    configured=self._configured,
                    server=limit,
                )
            self._limit = limit
            self._capacity = max(1, math.floor(limit * self._safety))

    def _trust(self, remaining: int, reset_at: float) -> None:
        current = self._server
        if current is None or reset_at > current[1] + _SKEW:
            self._server = (remaining, reset_at)  # a new server window
        elif reset_at >= current[1] - _SKEW:
            # the same window: answers to requests still in flight report more than
            # we have spent since, so the lowest word wins
            self._server = (min(current[0], remaining), current[1])
        # else: a late answer from a window already over; it says nothing about now

    def block_for(self, seconds: float, *, now: float) -> bool:
        """Send nothing for ``seconds`` from ``now`` (a 429's Retry-After). True if capped
        or ignored."""
        if math.isnan(seconds) or seconds < 0:
            return _report("retry_after", seconds, "ignored")
        absurd = False
        if seconds > MAX_WAIT:
            absurd = _report("retry_after", seconds, f"capped at {MAX_WAIT:g}s")
            seconds = MAX_WAIT
        until = now + seconds
        if self._blocked_until is None or until > self._blocked_until:
            self._blocked_until = until
        return absurd


def _report(field: str, value: float, action: str) -> bool:
    _log.warning("rate_limit.absurd_value", field=field, value=value, action=action)
    return True
