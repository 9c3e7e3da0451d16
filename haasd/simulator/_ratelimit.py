"""The HaaS docs' per-plan rate limit: a fixed window of 60 seconds per client, on the clock.

Windows are aligned to the clock's wall time (``floor(now / 60) * 60``), so
``X-RateLimit-Reset`` is the epoch second the current window ends, as the HaaS docs' example
(``1705329600``, a whole minute) suggests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal

from haasd.simulator._messages import Headers, Reply, json_reply

__all__ = [
    "PLAN_REQUESTS_PER_MINUTE",
    "FixedWindowLimiter",
    "Plan",
    "RateStatus",
    "plan_rate",
    "too_many",
]

Plan = Literal["free", "pro", "enterprise"]

#: The HaaS docs' table: requests per minute for each plan.
PLAN_REQUESTS_PER_MINUTE: Final[dict[Plan, int]] = {"free": 60, "pro": 300, "enterprise": 1000}


def plan_rate(plan: Plan) -> int:
    """The requests per minute of ``plan``; a :class:`ValueError` for an unknown plan."""
    rate = PLAN_REQUESTS_PER_MINUTE.get(plan)
    if rate is None:
        raise ValueError(f"unknown plan {plan!r}; one of {', '.join(PLAN_REQUESTS_PER_MINUTE)}")
    return rate


RATE_LIMIT_MESSAGE: Final = "Slow down. Even machines benefit from patience."
RATE_LIMIT_SUGGESTION: Final = "Consider batching requests or upgrading your plan."


@dataclass(frozen=True, slots=True)
class RateStatus:
    """Where a client stands in the current window."""

    allowed: bool
    limit: int
    remaining: int
    reset: int
    """Epoch second at which the window ends."""
    retry_after: int
    """Whole seconds until the window ends, at least 1."""

    def headers(self) -> Headers:
        return (
            ("X-RateLimit-Limit", str(self.limit)),
            ("X-RateLimit-Remaining", str(self.remaining)),
            ("X-RateLimit-Reset", str(self.reset)),
        )


class FixedWindowLimiter:
    """``limit`` requests per ``window`` seconds per key; the rest are refused."""

    __slots__ = ("_limit", "_window", "_windows")

    def __init__(self, limit: int, window: float = 60.0) -> None:
        if limit < 1:
            raise ValueError("a rate limit allows at least one request")
        self._limit = limit
        self._window = window
        self._windows: dict[str, tuple[float, int]] = {}

    @property
    def limit(self) -> int:
        return self._limit

    def check(self, key: str, now: float, *, consume: bool = True) -> RateStatus:
        """Count one request for ``key`` at ``now`` (unless ``consume`` is false).

        A refused request is not counted: the window's count never exceeds the limit.
        """
        start = math.floor(now / self._window) * self._window
        window_start, count = self._windows.get(key, (start, 0))
        if window_start != start:
            count = 0
        allowed = count < self._limit
        if allowed and consume:
            count += 1
            self._windows[key] = (start, count)
        reset = start + self._window
        return RateStatus(
            allowed=allowed,
            limit=self._limit,
            remaining=max(0, self._limit - count),
            reset=math.ceil(reset),
            retry_after=max(1, math.ceil(reset - now)),
        )


def too_many(status: RateStatus) -> Reply:
    """The HaaS docs' 429 answer, body word for word, with ``Retry-After``."""
    body = {
        "error": {
            "code": 429,
            "type": "rate_limit_exceeded",
            "message": RATE_LIMIT_MESSAGE,
            "retry_after": status.retry_after,
            "suggestion": RATE_LIMIT_SUGGESTION,
        }
    }
    return json_reply(429, body, (("Retry-After", str(status.retry_after)), *status.headers()))
