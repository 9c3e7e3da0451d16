"""Grants at risk: the ready queue, and the grants loaded, against the rate budget."""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import structlog

from haasd import refresh_policy as decide
from haasd.clock import Clock
from haasd.ratelimit import RateBudget
from haasd.refresher._stats import RefresherStats

__all__ = ["RISK_CHECK_EVERY", "RiskWatch", "log_loaded"]

_log = structlog.get_logger("haasd.refresher")

#: how often (clock seconds) a backlog is checked for grants at risk
RISK_CHECK_EVERY: Final = 10.0


class RiskWatch:
    """Grants at risk: waiting for the budget longer than their token lasts."""

    def __init__(
        self,
        stats: RefresherStats,
        *,
        budget: RateBudget,
        clock: Clock,
        ready_expiries: Callable[[], list[float]],
        in_flight: Callable[[], int],
    ) -> None:
        self._stats = stats
        self._budget = budget
        self._clock = clock
        self._ready_expiries = ready_expiries
        self._in_flight = in_flight
        self._checked_at = float("-inf")

    def at_risk(self) -> int:
        """Waiting grants whose token ends before the budget can reach them."""
        return decide.at_risk(
            self._ready_expiries(),
            self._clock.time(),
            per_request=60.0 / self._budget.capacity,
            in_flight=self._in_flight(),
        )

    def watch(self, now: float) -> None:
        """Log when grants fall at risk (demand beyond the budget), and when none are."""
        if now - self._checked_at < RISK_CHECK_EVERY:
            return
        self._checked_at = now
        stats = self._stats
        before = stats.at_risk
        after = stats.at_risk = self.at_risk()
        backlog = len(self._ready_expiries())
        if after and not before:
            _log.warning(
                "grants at risk: demand exceeds the rate budget",
                at_risk=after,
                backlog=backlog,
                requests_per_minute=self._budget.limit,
                hint="earliest expiry is served first; raise the plan or requests_per_minute",
            )
        elif before and not after:
            _log.info("no grant at risk any more", backlog=backlog)


def log_loaded(
    loaded: int, interrupted: int, live: int, capacity: int, requests_per_minute: int
) -> None:
    """Say at start how many grants were loaded, and whether the plan keeps the ``live``
    ones (refreshed ahead: not dormant) fresh."""
    _log.info(
        "grants loaded",
        grants=loaded,
        interrupted=interrupted,
        plan_capacity=capacity,
        requests_per_minute=requests_per_minute,
    )
    if live > capacity:
        _log.warning(
            "more grants than the plan can keep fresh",
            refreshed_ahead=live,
            plan_capacity=capacity,
            hint="raise requests_per_minute/plan, or rely on refresh_idle for dormant grants",
        )
