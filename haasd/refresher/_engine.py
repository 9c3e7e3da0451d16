"""The refresh engine's public class: what the server reads, and running the schedule."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final

import anyio
import structlog
from anyio.abc import TaskStatus

from haasd.errors import NeedsReconsentError, TokenUnavailableError, UnknownHumanError
from haasd.grants import Grant, Serve, State, after_clock, serve_decision, state_at
from haasd.refresher._flight import _Flights

_log = structlog.get_logger("haasd.refresher")

#: the longest the scheduler sleeps without looking again (wall-clock steps, reloads)
MAX_SLEEP: Final = 600.0


class Refresher(_Flights):
    """Owns the in-memory grants and keeps them fresh. Run it with ``tg.start(r.run)``."""

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

    # --- served, or refused while backing off -------------------------------------------

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
