"""The refresh engine: every grant fresh, inside the rate limit, never a lost refresh token.

It holds every grant in memory (tokens decrypted once at start) and keeps them current:

* **One heap** of wall-clock deadlines, one entry per grant (stale entries skipped by
  version), drives everything: refreshes ahead of expiry and the clock passing the
  re-consent warning or the 30-day limit. Between deadlines the engine sleeps.
* **Due refreshes** go to a ready queue ordered by access expiry — earliest first when
  demand exceeds the budget — drained by a few workers.
* **Single flight**: at most one refresh per grant is in flight, whoever asked for it
  (the schedule, :meth:`Refresher.ensure_fresh`, an admin); the rest wait for it. The
  flight runs in the engine's own task group, so a caller that goes away cannot cut it.
* **Write before serve**: an intent (fingerprint of the refresh token being spent) is
  written before the request; the answer's tokens are written, synced and shielded from
  cancellation before memory — and so any reader — sees them.

Policy (when, what an answer means) is :mod:`haasd.grants`; this module does the I/O.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from typing import Final

import anyio
import structlog
from anyio.abc import TaskGroup, TaskStatus

from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock, rfc3339
from haasd.crypto import fingerprint
from haasd.errors import (
    ClientAuthError,
    HaasdError,
    NeedsReconsentError,
    RequestRejectedError,
    StoreError,
    TokenUnavailableError,
    TransientAuthError,
    UnknownHumanError,
)
from haasd.events import Event, EventBus
from haasd.grants import (
    Answer,
    Grant,
    Policy,
    RefreshIntent,
    Serve,
    State,
    after_clock,
    after_failure,
    after_refresh,
    failure_retry_at,
    serve_decision,
    state_at,
)
from haasd.ratelimit import RateBudget
from haasd.schedule import Schedule
from haasd.store import Store
from haasd.tokens import TokenResponse

__all__ = ["LATENCY_BUCKETS", "Refresher", "RefresherStats"]

_log = structlog.get_logger("haasd.refresher")

#: the longest the scheduler sleeps without looking again (wall-clock steps, reloads)
MAX_SLEEP: Final = 600.0
#: prompt retries, with the same refresh token, of a request whose answer was lost
LOST_ANSWER_RETRIES: Final = 2
LOST_ANSWER_DELAY: Final = 1.0
#: how often (clock seconds) a backlog is checked for grants at risk
RISK_CHECK_EVERY: Final = 10.0
#: overdue grants at start-up are spread over up to this many seconds
STARTUP_SPREAD: Final = 30.0
Checkpoint = Callable[[str, str], None]


#: upper bounds (seconds) of the refresh-latency histogram's buckets
LATENCY_BUCKETS: Final = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


@dataclass(slots=True)
class RefresherStats:
    """Figures for health and /metrics."""

    refreshes: Counter[str] = field(default_factory=Counter)  # by outcome
    #: refresh round trips: a count per bucket of LATENCY_BUCKETS (+ one for +Inf), sum
    latency_buckets: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0
    #: refreshes that landed after the old access token had already expired
    late: int = 0
    client_fault: str | None = None
    store_error: str | None = None
    at_risk: int = 0

    def observe_latency(self, seconds: float) -> None:
        index = next(
            (i for i, bound in enumerate(LATENCY_BUCKETS) if seconds <= bound),
            len(LATENCY_BUCKETS),
        )
        self.latency_buckets[index] += 1
        self.latency_sum += seconds


@dataclass(slots=True)
class _Flight:
    done: anyio.Event = field(default_factory=anyio.Event)
    error: HaasdError | None = None


class Refresher:
    """Owns the in-memory grants and keeps them fresh. Run it with ``tg.start(r.run)``."""

    def __init__(
        self,
        *,
        store: Store,
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
        self._wakeup = anyio.Event()
        self._ready_event = anyio.Event()
        self._tg: TaskGroup | None = None

    # --- what the server reads ----------------------------------------------------------

    def grant(self, human_id: str) -> Grant | None:
        return self._grants.get(human_id)

    def grants(self) -> Iterable[Grant]:
        return self._grants.values()

    async def ensure_fresh(self, human_id: str, min_ttl: float = 0.0) -> Grant:
        """A grant whose access token has more than ``min_ttl`` seconds left.

        Refreshes now if needed — sharing any refresh already in flight — and raises
        :class:`UnknownHumanError`, :class:`NeedsReconsentError` or
        :class:`TokenUnavailableError` (with ``retry_after``) when there is none to be had.
        """
        attempted = False
        while True:
            grant = self._grants.get(human_id)
            if grant is None:
                raise UnknownHumanError(human_id)
            now = self.clock.time()
            state = state_at(grant.state, grant.refresh_expires_at, now, self.policy)
            decision = serve_decision(state, grant.access_expires_at, now, min_ttl)
            if decision is Serve.SERVE:
                self._served(grant, now)
                return grant
            if decision is Serve.NEEDS_RECONSENT:
                raise NeedsReconsentError(human_id, grant.last_error)
            if attempted:
                reason = grant.last_error or (
                    f"the server grants tokens of {grant.access_expires_at - now:.0f}s, "
                    f"less than the {min_ttl:.0f}s asked for"
                )
                raise TokenUnavailableError(human_id, reason, self._retry_after(grant, now))
            self._refuse_if_backing_off(grant, now)
            await self._fly(human_id).done.wait()
            attempted = True

    async def refresh_now(self, human_id: str) -> Grant:
        """Refresh now, whatever the schedule says (admin). Raises what the attempt met."""
        grant = self._grants.get(human_id)
        if grant is None:
            raise UnknownHumanError(human_id)
        now = self.clock.time()
        if (
            state_at(grant.state, grant.refresh_expires_at, now, self.policy)
            is State.NEEDS_RECONSENT
        ):
            raise NeedsReconsentError(human_id, grant.last_error)
        flight = self._fly(human_id, force=True)
        await flight.done.wait()
        if flight.error is not None:
            raise flight.error
        return self._grants[human_id]

    async def add(self, grant: Grant) -> None:
        """Store a new or replaced grant (a consent) and schedule it."""
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.put_grant(grant)
        self._grants[grant.human_id] = grant
        self._interrupted.discard(grant.human_id)
        self._place(grant, self.clock.time())

    async def delete(self, human_id: str) -> bool:
        with anyio.CancelScope(shield=True), self._activity.busy():
            existed = await self.store.delete_grant(human_id)
        self._grants.pop(human_id, None)
        self._schedule.drop(human_id)
        self._last_served.pop(human_id, None)
        return existed

    @property
    def backlog(self) -> int:
        """Grants due for a refresh and waiting for a worker."""
        return self._schedule.backlog

    def health(self) -> dict[str, object]:
        reasons: list[str] = []
        if self.stats.client_fault:
            reasons.append(f"refreshing stopped: {self.stats.client_fault}")
        if self.stats.store_error:
            reasons.append(f"store not writable: {self.stats.store_error}")
        at_risk = self.at_risk()
        if at_risk:
            reasons.append(f"{at_risk} grant(s) may expire before the rate budget reaches them")
        blocked = self.budget.blocked_until
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "grants": len(self._grants),
            "refresh_backlog": self.backlog,
            "in_flight": len(self._flights),
            "rate_budget_remaining": self.budget.remaining,
            "rate_blocked_for": None
            if blocked is None
            else max(0.0, blocked - self.clock.monotonic()),
        }

    # --- running ------------------------------------------------------------------------

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load every grant, then keep them fresh until cancelled."""
        await self._load()
        async with anyio.create_task_group() as tg:
            self._tg = tg
            for _ in range(self._workers):
                tg.start_soon(self._worker)
            task_status.started()
            await self._schedule_loop()

    async def _load(self) -> None:
        with self._activity.busy():
            grants = await self.store.list_grants()
        now = self.clock.time()
        for grant in grants:
            if grant.intent is not None:
                # the last attempt's answer may have been lost: retry promptly
                self._interrupted.add(grant.human_id)
                grant = replace(grant, next_refresh_at=now)
            self._grants[grant.human_id] = grant
        # the clock moved while haasd was down: apply it to all in memory, write every
        # change in one transaction (not one synced write per grant), then announce them
        changed = [c for g in self._grants.values() if (c := after_clock(g, now, self.policy))]
        if changed:
            with anyio.CancelScope(shield=True), self._activity.busy():
                await self.store.put_grants(changed)
            for grant in changed:
                self._grants[grant.human_id] = grant
                self._announce_state(grant, self._state_reason(grant))
        for grant in self._grants.values():
            self._place(grant, now, startup=True)
        capacity = self._capacity()
        live = sum(1 for g in self._grants.values() if not self._idle(g, now))
        _log.info(
            "grants loaded",
            grants=len(grants),
            interrupted=len(self._interrupted),
            plan_capacity=capacity,
            requests_per_minute=self.budget.limit,
        )
        if live > capacity:
            _log.warning(
                "more grants than the plan can keep fresh",
                refreshed_ahead=live,
                plan_capacity=capacity,
                hint="raise requests_per_minute/plan, or rely on refresh_idle for dormant grants",
            )

    def _capacity(self) -> int:
        """Grants the budget keeps fresh: requests per hour ÷ refreshes per grant per hour."""
        lifetime = 3600.0  # the HaaS docs' access-token lifetime; the answer decides per grant
        per_grant_per_hour = 3600.0 / (self.policy.refresh_fraction * lifetime)
        return int(self.budget.limit * 60 / per_grant_per_hour)

    async def _schedule_loop(self) -> None:
        while True:
            now = self.clock.time()
            for human_id in self._schedule.pop_due(now):
                await self._due(human_id, now)
            delay = MAX_SLEEP
            next_deadline = self._schedule.next_deadline()
            if next_deadline is not None:
                delay = min(delay, next_deadline - now)
            self._wakeup = anyio.Event()
            await self._sleep_or_wakeup(delay)

    async def _sleep_or_wakeup(self, delay: float) -> None:
        async with anyio.create_task_group() as tg:

            async def sleeper() -> None:
                await self.clock.sleep(delay)
                tg.cancel_scope.cancel()

            tg.start_soon(sleeper)
            await self._wakeup.wait()
            tg.cancel_scope.cancel()

    async def _due(self, human_id: str, now: float) -> None:
        grant = await self._apply_clock(human_id, now)
        if grant is None:
            return
        if self._wants_refresh(grant, now):
            self._schedule.make_ready(human_id, grant.access_expires_at)
            self._ready_event.set()
            self._watch_risk(now)
        else:
            self._place(grant, now)

    async def _worker(self) -> None:
        while True:
            while (human_id := self._schedule.take_ready()) is None:
                self._ready_event = anyio.Event()
                await self._ready_event.wait()
            self._watch_risk(self.clock.time())
            grant = self._grants.get(human_id)
            if grant is None or not self._wants_refresh(grant, self.clock.time()):
                if grant is not None:
                    self._place(grant, self.clock.time())
                continue
            await self._fly(human_id).done.wait()

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

    def mark_served(self, grant: Grant, now: float) -> None:
        """The server handed out ``grant``'s access token (the fast path, from memory)."""
        current = self._grants.get(grant.human_id)
        if current is not None:
            self._served(current, now)

    def _served(self, grant: Grant, now: float) -> None:
        # the hot path: two dict writes, and a reschedule only when waking a dormant grant
        was_idle = self._idle(grant, now)
        self._last_served[grant.human_id] = now
        self.store.mark_served(grant.human_id, now)
        if was_idle:
            self._place(grant, now)

    def _refuse_if_backing_off(self, grant: Grant, now: float) -> None:
        if self.stats.client_fault is not None:
            raise TokenUnavailableError(grant.human_id, self.stats.client_fault, 60.0)
        blocked = self.budget.blocked_until
        if blocked is not None and blocked > self.clock.monotonic():
            wait = blocked - self.clock.monotonic()
            raise TokenUnavailableError(
                grant.human_id, "the HaaS rate limit asks haasd to wait", wait
            )
        retry_at = grant.next_refresh_at or 0.0
        backing_off = grant.consecutive_failures > 0 and retry_at > now
        if backing_off and grant.human_id not in self._flights:
            reason = grant.last_error or "refresh failing"
            raise TokenUnavailableError(grant.human_id, reason, retry_at - now)

    def _retry_after(self, grant: Grant, now: float) -> float:
        if grant.next_refresh_at is not None and grant.next_refresh_at > now:
            return grant.next_refresh_at - now
        return self.policy.backoff_base

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

    # --- one refresh ----------------------------------------------------------------------

    def _fly(self, human_id: str, *, force: bool = False) -> _Flight:
        """The refresh in flight for ``human_id``, starting one if there is none."""
        flight = self._flights.get(human_id)
        if flight is None:
            flight = _Flight()
            self._flights[human_id] = flight
            assert self._tg is not None, "the refresher is not running"  # noqa: S101
            self._tg.start_soon(self._run_flight, human_id, flight, force)
        return flight

    async def _run_flight(self, human_id: str, flight: _Flight, force: bool) -> None:
        try:
            flight.error = await self._refresh(human_id, force=force)
        except UnknownHumanError as exc:
            flight.error = exc  # deleted while the refresh began
        except StoreError as exc:
            # the disk said no: nothing is served that is not on disk; try again later
            flight.error = exc
            self.stats.store_error = str(exc)
            _log.error(
                "cannot write the store; refresh postponed", human_id=human_id, error=str(exc)
            )
            grant = self._grants.get(human_id)
            if grant is not None:
                now = self.clock.time()
                retry = failure_retry_at(
                    now, 3, grant.access_expires_at, None, self.policy, self._rng
                )
                self._grants[human_id] = replace(grant, next_refresh_at=retry)
                self._place(self._grants[human_id], now)
        else:
            self.stats.store_error = None
        finally:
            del self._flights[human_id]
            flight.done.set()

    async def _refresh(self, human_id: str, *, force: bool) -> HaasdError | None:
        grant = await self._apply_clock(human_id, self.clock.time())
        if grant is None:
            return UnknownHumanError(human_id)
        if grant.state is State.NEEDS_RECONSENT:
            return NeedsReconsentError(human_id, grant.last_error)
        if self.stats.client_fault is not None and not force:
            return ClientAuthError("client_fault", self.stats.client_fault)
        interrupted = human_id in self._interrupted
        intent = RefreshIntent(
            uuid.uuid4().hex, fingerprint(grant.refresh_token), self.clock.time()
        )
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.begin_refresh(human_id, intent)
        grant = replace(grant, intent=intent)
        self._grants[human_id] = grant
        lost = 0
        while True:
            started = time.perf_counter()  # real time: latency is a measurement
            try:
                answer = await self.auth.refresh(
                    grant.refresh_token, human_id=human_id, scope=grant.scope
                )
            except TransientAuthError as exc:
                self.stats.observe_latency(time.perf_counter() - started)
                if exc.sent and lost < LOST_ANSWER_RETRIES:
                    lost += 1  # the server may have rotated: retry with the same token, promptly
                    interrupted = True
                    await self.clock.sleep(LOST_ANSWER_DELAY)
                    continue
                return await self._failed(grant, exc, interrupted=interrupted)
            except HaasdError as exc:
                self.stats.observe_latency(time.perf_counter() - started)
                return await self._failed(grant, exc, interrupted=interrupted)
            self.stats.observe_latency(time.perf_counter() - started)
            self._hook("answered", human_id)
            await self._succeeded(grant, answer)
            self._hook("written", human_id)
            return None

    def _hook(self, point: str, human_id: str) -> None:
        if self._checkpoint is not None:
            self._checkpoint(point, human_id)

    async def _write_outcome(self, grant: Grant, new: Grant) -> bool:
        """Write a refresh's outcome — if the grant is still the one refreshed — then
        show it. A re-consent or delete that landed meanwhile wins: the answer is dropped."""
        attempt = grant.intent.attempt_id if grant.intent is not None else None
        with anyio.CancelScope(shield=True), self._activity.busy():
            written = await self.store.finish_refresh(new, attempt_id=attempt)
        if not written:
            _log.info(
                "refresh outcome dropped: the grant was replaced or deleted meanwhile",
                human_id=grant.human_id,
            )
            return False
        self._grants[grant.human_id] = new
        return True

    async def _succeeded(self, grant: Grant, answer: TokenResponse) -> None:
        now = self.clock.time()
        if now >= grant.access_expires_at and grant.state is not State.NEEDS_RECONSENT:
            self.stats.late += 1
        new = after_refresh(grant, answer, now, self.policy, self._rng)
        if not await self._write_outcome(grant, new):
            return
        self._interrupted.discard(grant.human_id)
        if self.stats.client_fault is not None:
            _log.info("refreshing resumed: the server accepted our client credentials")
            self.stats.client_fault = None
            for g in list(self._grants.values()):
                self._place(g, now)
        self.stats.refreshes["ok"] += 1
        self._place(new, now)
        self.events.publish(
            Event(
                "token.refreshed",
                new.human_id,
                now,
                {
                    "expires_at": rfc3339(new.access_expires_at),
                    "rotated": answer.refresh_token is not None,
                },
            )
        )
        if new.state is not grant.state:
            self._announce_state(new, "the refresh token's limit is near")

    async def _failed(self, grant: Grant, exc: HaasdError, *, interrupted: bool) -> HaasdError:
        now = self.clock.time()
        answer, new, maybe_lost = after_failure(
            grant, exc, now, self.policy, self._rng, interrupted=interrupted
        )
        human_id = grant.human_id
        self.stats.refreshes[answer.value] += 1
        if answer is Answer.CLIENT_FAULT and self.stats.client_fault is None:
            self.stats.client_fault = f"the server rejects haasd's client ({exc})"
            _log.error(
                "refreshing stopped for all grants: the token endpoint rejects our client",
                error=str(exc),
                hint="check haas.client_id and the client secret; reload or restart haasd",
            )
        retry_after = exc.retry_after if isinstance(exc, TransientAuthError) else None
        if retry_after is not None and retry_after > self.policy.retry_after_cap:
            _log.warning("capping an absurd Retry-After", retry_after=retry_after)
        if maybe_lost:
            self._interrupted.add(human_id)
        if not await self._write_outcome(grant, new):
            return exc
        if answer is Answer.REFUSED:
            self._interrupted.discard(human_id)
            self._schedule.drop(human_id)
            _log.warning("grant refused by the server", human_id=human_id, reason=new.last_error)
            self.events.publish(
                Event("grant.needs_reconsent", human_id, now, {"reason": new.last_error})
            )
        elif answer is Answer.CLIENT_FAULT:
            self._place(new, now)
        else:
            _log.info(
                "refresh failed; will retry",
                human_id=human_id,
                error=new.last_error,
                failures=new.consecutive_failures,
                retry_in=round((new.next_refresh_at or now) - now, 1),
            )
            self.events.publish(
                Event(
                    "refresh.failed",
                    human_id,
                    now,
                    {
                        "reason": new.last_error,
                        "failures": new.consecutive_failures,
                        "retry_at": rfc3339(new.next_refresh_at or now),
                    },
                )
            )
            self._place(new, now)
        if isinstance(exc, RequestRejectedError):
            _log.error("the token endpoint rejected haasd's request", error=str(exc))
        return exc
