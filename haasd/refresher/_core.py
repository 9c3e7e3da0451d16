"""The engine's state, and what every part of it does to a grant's place and state.

:class:`_Core` holds the in-memory grants, the flights and the schedule (its constructor
is :class:`~haasd.refresher.Refresher`'s). Its methods keep each grant's one deadline
(:meth:`_Core._place`), move a grant's state as the clock says — written, then announced —
and measure the backlog against the rate budget.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import anyio
import structlog
from anyio.abc import TaskGroup

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock, rfc3339
from haasd.demand import OnDemand
from haasd.errors import HaasdError
from haasd.events import Event, EventBus
from haasd.grants import Grant, Policy, State, after_clock
from haasd.ratelimit import RateBudget
from haasd.refresher._stats import RefresherStats
from haasd.schedule import Schedule
from haasd.grantstore import GrantStore

_log = structlog.get_logger("haasd.refresher")

#: how often (clock seconds) a backlog is checked for grants at risk
RISK_CHECK_EVERY: Final = 10.0
#: overdue grants at start-up are spread over up to this many seconds
STARTUP_SPREAD: Final = 30.0
Checkpoint = Callable[[str, str], None]


@dataclass(slots=True)
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: HaasdError | None = None


class _Core:
    """The engine's state and the scheduling every part shares (:class:`Refresher`'s base)."""

    def __init__(
        self,
        *,
        store: GrantStore,
        auth: AuthClient,
        clock: Clock,
        policy: Policy,
        events: EventBus,
        budget: RateBudget,
        rng: random.Random | None = None,
        activity: Activity | None = None,
        workers: int = 4,
        checkpoint: Checkpoint | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.clock = clock
        self.policy = policy
        self.events = events
        self.stats = RefresherStats()
        self.budget = budget
        self._rng = rng or random.Random()
        self._activity = activity or Activity()
        self._workers = workers
        self._checkpoint = checkpoint
        self._grants: dict[str, Grant] = {}
        self._schedule = Schedule()
        self._flights: dict[str, _Flight] = {}
        self._last_served: dict[str, float] = {}
        self._risk_checked_at = float("-inf")  # newer than the grants' last_served_at
        self._interrupted: set[str] = set()  # humans whose last answer may have been lost
        #: refreshes asked for outside the schedule: cooldowns, the share, refusals
        self.demand = OnDemand()
        #: humans whose handling met an unexpected error, and what it was (for health)
        self._faults: dict[str, str] = {}
        #: the access-token lifetime the server last granted, any grant (seconds)
        self._lifetime: float | None = None
        self._wakeup = anyio.Event()
        self._ready_event = anyio.Event()
        self._tg: TaskGroup | None = None

    # --- the backlog against the budget -------------------------------------------------

    @property
    def backlog(self) -> int:
        """Grants due for a refresh and waiting for a worker."""
        return self._schedule.backlog

    def at_risk(self) -> int:
        """Waiting grants whose token ends before the budget can reach them (earliest first)."""
        now = self.clock.time()
        per_request = 60.0 / self.budget.capacity
        ahead = len(self._flights)  # refreshes in flight spend the budget first
        return sum(
            1
            for position, expiry in enumerate(self._schedule.ready_expiries(), start=ahead + 1)
            if expiry <= now + position * per_request
        )

    def _watch_risk(self, now: float) -> None:
        """Log when grants fall at risk (demand beyond the budget), and when none are."""
        if now - self._risk_checked_at < RISK_CHECK_EVERY:
            return
        self._risk_checked_at = now
        before = self.stats.at_risk
        after = self.stats.at_risk = self.at_risk()
        if after and not before:
            _log.warning(
                "grants at risk: demand exceeds the rate budget",
                at_risk=after,
                backlog=self.backlog,
                requests_per_minute=self.budget.limit,
                hint="earliest expiry is served first; raise the plan or requests_per_minute",
            )
        elif before and not after:
            _log.info("no grant at risk any more", backlog=self.backlog)

    # --- scheduling ---------------------------------------------------------------------

    def _idle(self, grant: Grant, now: float) -> bool:
        last = self._last_served.get(grant.human_id, grant.last_served_at)
        return now - (grant.consented_at if last is None else last) > self.policy.refresh_idle

    def _wants_refresh(self, grant: Grant, now: float) -> bool:
        return (
            grant.state is not State.NEEDS_RECONSENT
            and self.stats.client_fault is None
            and not self._idle(grant, now)
            and (grant.next_refresh_at is None or grant.next_refresh_at <= now)
        )

    def _place(self, grant: Grant, now: float, *, startup: bool = False) -> None:
        """(Re)place the grant's one heap entry at its next deadline."""
        if grant.state is State.NEEDS_RECONSENT:
            self._schedule.drop(grant.human_id)
            return
        when = grant.refresh_expires_at
        if grant.state is State.ACTIVE:
            when = min(when, grant.refresh_expires_at - self.policy.reconsent_warning)
        if self.stats.client_fault is None and not self._idle(grant, now):
            due = grant.next_refresh_at if grant.next_refresh_at is not None else now
            if startup and due <= now:
                spread = min(STARTUP_SPREAD, max(0.0, grant.access_expires_at - now) / 4)
                due = now + self._rng.uniform(0, spread)
            when = min(when, due)
        if self._schedule.place(grant.human_id, when):
            self._wakeup.set()  # the new entry is first: the loop must look again

    @staticmethod
    def _state_reason(grant: Grant) -> str:
        if grant.state is State.RECONSENT_DUE:
            return "the refresh token's limit is near"
        return "refresh_token_expired"

    async def _apply_clock(self, human_id: str, now: float) -> Grant | None:
        """Move the grant's state as the clock says; persist and announce a change."""
        grant = self._grants.get(human_id)
        if grant is None:
            return None
        moved = after_clock(grant, now, self.policy)
        if moved is None:
            return grant
        grant = moved
        state = grant.state
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.update_status(
                human_id,
                state=state,
                last_error=grant.last_error,
                consecutive_failures=grant.consecutive_failures,
                next_refresh_at=grant.next_refresh_at,
            )
        self._grants[human_id] = grant
        self._announce_state(grant, self._state_reason(grant))
        return grant

    def _announce_state(self, grant: Grant, reason: str) -> None:
        now = self.clock.time()
        details: dict[str, object] = {
            "reason": reason,
            "refresh_expires_at": rfc3339(grant.refresh_expires_at),
            "days_left": max(0, int((grant.refresh_expires_at - now) // 86400)),
        }
        if grant.state is State.RECONSENT_DUE:
            self.events.publish(Event("grant.reconsent_due", grant.human_id, now, details))
            _log.info("re-consent due", human_id=grant.human_id, days_left=details["days_left"])
        elif grant.state is State.NEEDS_RECONSENT:
            self.events.publish(Event("grant.needs_reconsent", grant.human_id, now, details))
            _log.warning("re-consent needed", human_id=grant.human_id, reason=reason)
