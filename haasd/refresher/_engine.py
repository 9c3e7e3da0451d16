"""The refresh engine's public class: what the server reads, and running the schedule."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import replace
from typing import Final

import anyio
import structlog
from anyio.abc import TaskStatus

from haasd.demand import DEFAULT_WAIT, MAX_WAIT, Refusal, RefusalReason, impossible_min_ttl
from haasd.errors import (
    NeedsReconsentError,
    StoreError,
    TokenUnavailableError,
    UnknownHumanError,
)
from haasd.grants import Grant, Serve, State, after_clock, serve_decision, state_at
from haasd.refresher._core import _Flight
from haasd.refresher._flight import _Flights

_log = structlog.get_logger("haasd.refresher")

#: the longest the scheduler sleeps without looking again (wall-clock steps, reloads)
MAX_SLEEP: Final = 600.0
#: how often the times tokens were served are written (real seconds): a crash loses
#: at most this much of them
SERVED_FLUSH_EVERY: Final = 5.0
#: peers (and faulty grants) named in one health reason at most
_PEERS_SHOWN: Final = 3


class Refresher(_Flights):
    """Owns the in-memory grants and keeps them fresh. Run it with ``tg.start(r.run)``."""

    # --- what the server reads ----------------------------------------------------------

    def grant(self, human_id: str) -> Grant | None:
        return self._grants.get(human_id)

    def grants(self) -> Iterable[Grant]:
        return self._grants.values()

    async def ensure_fresh(
        self,
        human_id: str,
        min_ttl: float = 0.0,
        *,
        wait: float = DEFAULT_WAIT,
        peer: int | None = None,
    ) -> Grant:
        """A grant whose access token has more than ``min_ttl`` seconds left (plus the
        policy's ``serve_margin``).

        Refreshes now if needed — sharing any refresh already in flight — but waits at
        most ``wait`` seconds, and refuses at once a refresh that cannot finish in time
        (rate budget, Retry-After, backoff) or that ``peer`` may not ask for now
        (:mod:`haasd.demand`). Raises :class:`UnknownHumanError`,
        :class:`NeedsReconsentError` or :class:`TokenUnavailableError` (with
        ``retry_after``) when there is none to be had.
        """
        grant, now = self._current(human_id), self.clock.time()
        if self._servable(grant, now, min_ttl):
            return grant
        flight = self._flights.get(human_id)
        if flight is None:
            self._admit(grant, now, min_ttl, wait, peer)
            flight = self._fly(human_id)
        await self._await_flight(flight, human_id, wait)
        grant, now = self._current(human_id), self.clock.time()
        if self._servable(grant, now, min_ttl):
            return grant
        reason = grant.last_error or (
            f"the server grants tokens of {grant.access_expires_at - now:.0f}s, "
            f"less than the {min_ttl:.0f}s asked for"
        )
        raise TokenUnavailableError(human_id, reason, self._retry_after(grant, now))

    async def refresh_now(
        self, human_id: str, *, wait: float = MAX_WAIT, peer: int | None = None
    ) -> Grant:
        """Refresh now, whatever the schedule says (admin), within the on-demand limits.

        Waits at most ``wait`` seconds (the refresh goes on after that); raises what the
        attempt met, or :class:`TokenUnavailableError` when it cannot go now.
        """
        grant = self._current(human_id)
        now = self.clock.time()
        if (
            state_at(grant.state, grant.refresh_expires_at, now, self.policy)
            is State.NEEDS_RECONSENT
        ):
            raise NeedsReconsentError(human_id, grant.last_error)
        flight = self._flights.get(human_id)
        if flight is None:
            self._refuse_unless_budget(grant, wait)
            self._refuse_on_demand(grant, peer)
            flight = self._fly(human_id, force=True)
        await self._await_flight(flight, human_id, wait)
        if flight.error is not None:
            raise flight.error
        return self._current(human_id)

    def _current(self, human_id: str) -> Grant:
        grant = self._grants.get(human_id)
        if grant is None:
            raise UnknownHumanError(human_id)
        return grant

    def _servable(self, grant: Grant, now: float, min_ttl: float) -> bool:
        """True (and counted as served) if the token in hand has ``min_ttl`` left; False
        if a refresh could give one; NeedsReconsentError if nothing can."""
        state = state_at(grant.state, grant.refresh_expires_at, now, self.policy)
        decision = serve_decision(
            state, grant.access_expires_at, now, min_ttl, self.policy.serve_margin
        )
        if decision is Serve.NEEDS_RECONSENT:
            raise NeedsReconsentError(grant.human_id, grant.last_error)
        if decision is Serve.SERVE:
            self._served(grant, now)
            return True
        return False

    async def _await_flight(self, flight: _Flight, human_id: str, wait: float) -> None:
        with anyio.move_on_after(wait):
            await flight.done.wait()
            return
        raise TokenUnavailableError(
            human_id, f"the refresh is still under way after {wait:g}s; ask again shortly", 1.0
        )

    async def add(self, grant: Grant) -> None:
        """Store a new or replaced grant (a consent) and schedule it."""
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.put_grant(grant)
        self._grants[grant.human_id] = grant
        self._interrupted.discard(grant.human_id)
        self._faults.pop(grant.human_id, None)
        self.demand.forget(grant.human_id)
        self._place(grant, self.clock.time())

    async def delete(self, human_id: str) -> bool:
        """Erase the grant from the store and memory; False if there was none. Its refresh
        token is then revoked at the server (RFC 7009, when configured), in the background:
        a grant haasd no longer holds must not live on at HaaS."""
        with anyio.CancelScope(shield=True), self._activity.busy():
            existed = await self.store.delete_grant(human_id)
        grant = self._grants.get(human_id)
        if grant is not None:
            self._revoke_later(human_id, grant.refresh_token, "the grant was deleted")
        self._grants.pop(human_id, None)
        self._schedule.drop(human_id)
        self._last_served.pop(human_id, None)
        self._faults.pop(human_id, None)
        self.demand.forget(human_id)
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
        monotonic = self.clock.monotonic()
        for peer, reason, count in self.demand.refused_peers(monotonic)[:_PEERS_SHOWN]:
            who = "an unknown peer" if peer is None else f"peer uid {peer}"
            reasons.append(
                f"on-demand refreshes refused for {who}: {count} in the last minute "
                f"(last: {reason.value})"
            )
        unreadable = self.store.unreadable
        if unreadable:
            names = ", ".join(sorted(unreadable)[:_PEERS_SHOWN])
            reasons.append(
                f"{len(unreadable)} grant(s) quarantined, store row unreadable: {names}; "
                "re-consent them (haasd consent start --human ID)"
            )
        if self._faults:
            first = sorted(self._faults.items())[:_PEERS_SHOWN]
            shown = ", ".join(f"{human} ({what})" for human, what in first)
            reasons.append(f"{len(self._faults)} grant(s) met an internal error: {shown}")
        blocked = self.budget.blocked_until
        return {
            "status": "degraded" if reasons else "ok",
            "reasons": reasons,
            "grants": len(self._grants),
            "refresh_backlog": self.backlog,
            "in_flight": len(self._flights),
            "rate_budget_remaining": self.budget.remaining,
            "rate_blocked_for": None if blocked is None else max(0.0, blocked - monotonic),
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

    # --- whether a refresh asked for may go now ------------------------------------------

    def _admit(
        self, grant: Grant, now: float, min_ttl: float, wait: float, peer: int | None
    ) -> None:
        """Raise :class:`TokenUnavailableError` unless a refresh for this request may
        start now and can finish within ``wait``."""
        human_id = grant.human_id
        if self.stats.client_fault is not None:
            raise TokenUnavailableError(human_id, self.stats.client_fault, 60.0)
        lifetime = self._lifetime_of(grant)
        if impossible_min_ttl(min_ttl, lifetime, self.policy.serve_margin):
            assert lifetime is not None  # noqa: S101 - impossible_min_ttl says so
            most = max(0, int(lifetime - self.policy.serve_margin) - 1)
            refusal = Refusal(
                RefusalReason.IMPOSSIBLE,
                f"the server grants tokens of {lifetime:.0f}s, so no token can have "
                f"{min_ttl:.0f}s left; ask for a min_ttl of at most {most}",
                self.policy.on_demand_cooldown,
            )
            raise self._refused(
                grant, self.demand.refuse(peer, self.clock.monotonic(), refusal), peer
            )
        retry_at = grant.next_refresh_at or 0.0
        if grant.consecutive_failures > 0 and retry_at > now:
            raise TokenUnavailableError(
                human_id, grant.last_error or "refresh failing", retry_at - now
            )
        self._refuse_unless_budget(grant, wait)
        if not self._due_anyway(grant, now):
            self._refuse_on_demand(grant, peer)

    def _refuse_unless_budget(self, grant: Grant, wait: float) -> None:
        """No refresh is started that the rate budget would hold back beyond ``wait``."""
        ready_in = self.budget.ready_in()
        if ready_in > wait:
            reason = (
                "HaaS asked haasd to wait (Retry-After or its rate limit)"
                if self.budget.blocked_until is not None
                else "the plan's rate budget is spent for the moment"
            )
            raise TokenUnavailableError(grant.human_id, reason, ready_in)

    def _refuse_on_demand(self, grant: Grant, peer: int | None) -> None:
        refusal = self.demand.admit(
            grant.human_id,
            peer,
            self.clock.monotonic(),
            capacity=self.budget.capacity,
            share=self.policy.on_demand_share,
            cooldown=self.policy.on_demand_cooldown,
        )
        if refusal is not None:
            raise self._refused(grant, refusal, peer)

    def _refused(self, grant: Grant, refusal: Refusal, peer: int | None) -> TokenUnavailableError:
        count = self.demand.refusals_of(peer, self.clock.monotonic())
        if _milestone(count):  # the first, the 10th, the 100th, ...: a flood is a few lines
            _log.warning(
                "on-demand refreshes refused for a peer",
                peer_uid=peer,
                count=count,
                human_id=grant.human_id,
                reason=refusal.reason.value,
                detail=refusal.message,
            )
        return TokenUnavailableError(grant.human_id, refusal.message, refusal.retry_after)

    def _due_anyway(self, grant: Grant, now: float) -> bool:
        """Would the schedule refresh this grant now anyway (so asking costs nothing)?"""
        due = grant.next_refresh_at
        return due is not None and due <= now and not self._idle(grant, now)

    def _lifetime_of(self, grant: Grant) -> float | None:
        """The access-token lifetime the server last granted this grant (or any)."""
        issued = grant.last_refresh_at
        if issued is not None and grant.access_expires_at > issued:
            return grant.access_expires_at - issued
        return self._lifetime

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
            tg.start_soon(self._flush_served_loop)
            task_status.started()
            await self._schedule_loop()

    async def _flush_served_loop(self) -> None:
        """Write the times tokens were served every few seconds (and the store writes
        the rest at close), so a crash makes no grant look dormant that was not."""
        while True:
            await anyio.sleep(SERVED_FLUSH_EVERY)
            try:
                with anyio.CancelScope(shield=True), self._activity.busy():
                    await self.store.flush_served()
            except StoreError as exc:  # kept in memory; the next flush tries again
                _log.warning("cannot write the served times yet", error=str(exc))

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
        try:
            await self._due_unguarded(human_id, now)
        except Exception as exc:  # a defect or the disk: this grant waits, the loop goes on
            self._fault(human_id, "scheduling", exc)
            self._schedule.place(human_id, now + self.policy.backoff_base)

    async def _due_unguarded(self, human_id: str, now: float) -> None:
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


def _milestone(count: int) -> bool:
    """1, 10, 100, 1000, ...: when a growing count is worth a log line."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1
