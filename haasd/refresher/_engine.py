"""The refresh engine: :class:`Refresher` wires the parts and answers the server.

Its parts: :class:`~haasd.refresher._memory.Memory` (the grants and notes about them),
the :class:`~haasd.refresher._scheduler.Scheduler` (deadlines, ready queue, workers),
:class:`~haasd.refresher._flight.SingleFlight` (one refresh per grant),
:class:`~haasd.refresher._refresh.Refreshing` (one refresh: permit, intent, request),
:class:`~haasd.refresher._outcome.Outcomes` (written, then kept and announced) and
:class:`~haasd.refresher._reload.Reloads` (what other instances changed). What to
decide is :mod:`haasd.refresh_policy`'s, given the figures read here.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from typing import Final

import anyio
from anyio.abc import TaskStatus

from haasd import refresh_policy as decide
from haasd.authclient import AuthClient
from haasd.clock import Activity, Clock
from haasd.coordination import Coordination, InProcess
from haasd.demand import DEFAULT_WAIT, MAX_WAIT, OnDemand
from haasd.errors import NeedsReconsentError, TokenUnavailableError, UnknownHumanError
from haasd.events import EventBus
from haasd.grantpack import Times
from haasd.grants import Grant, Policy, Serve, State, serve_decision, state_at
from haasd.grantstore import GrantStore
from haasd.health import Health, health_reasons
from haasd.ratelimit import RateBudget
from haasd.refresher._asking import Gate
from haasd.refresher._flight import Background, Flight, SingleFlight
from haasd.refresher._loading import Loader, Placing, deadline_here, open_sealed
from haasd.refresher._memory import Memory
from haasd.refresher._outcome import Outcomes, state_reason
from haasd.refresher._probe import ClientProbe
from haasd.refresher._refresh import Checkpoint, Refreshing
from haasd.refresher._reload import Adoption, Reloads
from haasd.refresher._risk import RiskWatch, log_loaded
from haasd.refresher._scheduler import Scheduler
from haasd.refresher._served import SERVED_FLUSH_EVERY, Served
from haasd.refresher._stats import RefresherStats
from haasd.refresher._steps import ClockSteps

__all__ = ["SERVED_FLUSH_EVERY", "Refresher"]

#: why a token is not to be had while the grants load (the server waits instead)
_LOADING: Final = "haasd is loading its grants"


class Refresher:
    """Owns the in-memory grants and keeps them fresh. Run it with ``tg.start(r.run)``."""

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
        coordination: Coordination | None = None,
    ) -> None:
        self.store = store
        self.auth = auth
        self.clock = clock
        self.events = events
        self.budget = budget
        #: refreshes asked for outside the schedule: cooldowns, the share, refusals
        self.demand = OnDemand()
        self._rng = rng or random.Random()
        self._activity = activity or Activity()
        self._memory = Memory(policy)
        self._served = Served(store, self._activity, idle=self._idle, place=self._place)
        self._steps = ClockSteps(clock, self._memory, replan=self._replan)
        self._background = Background()
        self._flights = SingleFlight(self._background)
        self._scheduler = Scheduler(
            clock, workers=workers, due=self._due, work=self._work, look=self._steps.check
        )
        self._probe = ClientProbe(  # while the server rejects haasd's client
            self._memory, clock, lambda human_id: self._fly(human_id, force=True).done.wait()
        )
        self._outcomes = Outcomes(
            self._memory, store=store, auth=auth, clock=clock, events=events,
            background=self._background, place=self._place, drop=self._scheduler.drop,
            rng=self._rng, activity=self._activity, rejected=self._probe.rejected,
        )  # fmt: skip
        self._coordination: Coordination = coordination or InProcess()
        self._reloads = self._compose_reloads()
        self._coordination.subscribe(self._reloads)
        self._refreshing = self._compose_refreshing(self._coordination, checkpoint)
        self._gate = Gate(
            self._memory, demand=self.demand, budget=budget, clock=clock, idle=self._idle
        )
        self._risk = RiskWatch(
            self._memory.stats, budget=budget, clock=clock,
            ready_expiries=self._scheduler.ready_expiries, in_flight=self._flights.__len__,
        )  # fmt: skip

    def _compose_reloads(self) -> Reloads:
        memory, scheduler = self._memory, self._scheduler
        adopt = Adoption(
            memory, clock=self.clock, place=self._place, drop=scheduler.drop,
            demand=self.demand, events=self.events, outcomes=self._outcomes,
        )  # fmt: skip
        return Reloads(self.store, adopt=adopt, replan=self._replan, known=memory.grants.keys)

    def _compose_refreshing(
        self, coordination: Coordination, checkpoint: Checkpoint | None
    ) -> Refreshing:
        return Refreshing(
            self._memory,
            auth=self.auth,
            clock=self.clock,
            coordination=coordination,
            reloads=self._reloads,
            outcomes=self._outcomes,
            place=self._place,
            rng=self._rng,
            activity=self._activity,
            checkpoint=checkpoint,
        )

    @property
    def policy(self) -> Policy:
        """The refresh policy in force: a reload replaces it, for every part at once."""
        return self._memory.policy

    @policy.setter
    def policy(self, policy: Policy) -> None:
        self._memory.policy = policy

    @property
    def stats(self) -> RefresherStats:
        """Figures for health and /metrics."""
        return self._memory.stats

    @property
    def loading(self) -> bool:
        """True until every grant is in memory: :meth:`grant` has none, :meth:`peek` reads."""
        return self._served.loading

    def grant(self, human_id: str) -> Grant | None:
        """The grant in memory (None while loading: the store is still filling it)."""
        if self._served.loading:
            return None
        self._steps.check()  # a wall clock set back moves every instant first
        return self._memory.grants.get(human_id)

    async def peek(self, human_id: str) -> Grant | None:
        """The grant in memory — or, while loading, as stored (one row read beside the
        load, to judge and serve from: see :meth:`GrantStore.peek_grant`)."""
        if not self._served.loading:
            return self.grant(human_id)
        return await self.store.peek_grant(human_id)

    def grants(self) -> Iterable[Grant]:
        return self._memory.grants.values()

    def grant_times(self) -> Iterable[Times]:
        return self._memory.grants.times()

    async def open_sealed(self) -> None:  # once serving: see haasd.refresher._loading
        await open_sealed(self._memory.grants)

    def summary(self) -> tuple[int, float | None]:
        """How many grants, and the schedule's earliest deadline (O(1): no scan)."""
        return len(self._memory.grants), self._scheduler.next_deadline()

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
        if (flight := self._flights.get(human_id)) is None:
            self._gate.admit(grant, now, min_ttl, wait, peer)
            flight = self._fly(human_id)
        await flight.landed(human_id, wait)
        grant, now = self._current(human_id), self.clock.time()
        if self._servable(grant, now, min_ttl):
            return grant
        reason = grant.last_error or (
            f"the server grants tokens of {grant.access_expires_at - now:.0f}s, "
            f"less than the {min_ttl:.0f}s asked for"
        )
        raise TokenUnavailableError(human_id, reason, decide.retry_after(grant, now, self.policy))

    async def refresh_now(
        self, human_id: str, *, wait: float = MAX_WAIT, peer: int | None = None
    ) -> Grant:
        """Refresh now, whatever the schedule says (admin), within the on-demand limits:
        waits at most ``wait`` seconds (the refresh goes on after that); raises what the
        attempt met, or :class:`TokenUnavailableError` when it cannot go now."""
        grant, now = self._current(human_id), self.clock.time()
        state = state_at(grant.state, grant.refresh_expires_at, now, self.policy)
        if state is State.NEEDS_RECONSENT:
            raise NeedsReconsentError(human_id, grant.last_error)
        if (flight := self._flights.get(human_id)) is None:
            self._gate.admit_admin(grant, wait, peer)
            flight = self._fly(human_id, force=True)
        await flight.landed(human_id, wait)
        if flight.error is not None:
            raise flight.error
        return self._current(human_id)

    def mark_served(self, grant: Grant, now: float) -> None:
        """The server handed out ``grant``'s access token (the fast path: ``grant`` came
        from :meth:`grant` with no await since, or from :meth:`peek`)."""
        if self._served.loading or grant.human_id in self._memory.grants:
            self._served.note(grant, now)

    async def add(self, grant: Grant) -> None:
        """Store a new or replaced grant (a consent) and schedule it."""
        with anyio.CancelScope(shield=True), self._activity.busy():
            await self.store.put_grant(grant)
        self._memory.grants[grant.human_id] = grant
        self._memory.forget(grant.human_id)
        self.demand.forget(grant.human_id)
        self._place(grant, self.clock.time())

    async def delete(self, human_id: str) -> bool:
        """Erase the grant from the store and memory; False if there was none. Its refresh
        token is then revoked at the server (RFC 7009, when configured), in the background:
        a grant haasd no longer holds must not live on at HaaS."""
        with anyio.CancelScope(shield=True), self._activity.busy():
            existed = await self.store.delete_grant(human_id)
        if (grant := self._memory.grants.pop(human_id, None)) is not None:
            self._outcomes.revoke_later(human_id, grant.refresh_token, "the grant was deleted")
        self._scheduler.drop(human_id)
        self._memory.forget(human_id)
        self.demand.forget(human_id)
        return existed

    def health(self) -> Health:
        """Ok, or degraded and why, with the engine's figures."""
        memory, monotonic = self._memory, self.clock.monotonic()
        stats = memory.stats
        reasons = health_reasons(
            client_fault=stats.client_fault,
            store_error=stats.store_error,
            at_risk=self.at_risk(),
            refused_peers=self.demand.refused_peers(monotonic),
            unreadable=self.store.unreadable,
            faults=memory.faults,
            failing=memory.failing_expired(self.clock.time()),
            cluster=self._coordination.problem(),
        )
        blocked = self.budget.blocked_until
        return Health(
            reasons=reasons,
            grants=len(self._memory.grants),
            refresh_backlog=self.backlog,
            in_flight=len(self._flights),
            rate_budget_remaining=self.budget.remaining,
            rate_blocked_for=None if blocked is None else max(0.0, blocked - monotonic),
            instance=self._coordination.instance_id,
            instances=tuple(self._coordination.instances()),
        )

    @property
    def backlog(self) -> int:
        """Grants due for a refresh and waiting for a worker."""
        return self._scheduler.backlog

    def at_risk(self) -> int:
        """Waiting grants whose token ends before the budget can reach them (earliest first)."""
        return self._risk.at_risk()

    def _idle(self, grant: Grant, now: float) -> bool:
        return decide.is_idle(grant, self.store.served_at(grant.human_id), now, self.policy)

    def _place(self, grant: Grant, now: float) -> None:
        """(Re)place the grant's one deadline."""
        when = deadline_here(
            grant,
            now,
            self.policy,
            client_fault=self._memory.stats.client_fault,
            idle=self._idle(grant, now),
            defer=self._coordination.defer,
        )
        self._scheduler.place(grant.human_id, when)

    def _replan(self) -> None:
        """The live instances changed: every grant's deadline again."""
        now = self.clock.time()
        for grant in self._memory.grants.values():
            self._place(grant, now)

    def _current(self, human_id: str) -> Grant:
        if self._served.loading:
            raise TokenUnavailableError(human_id, _LOADING, 1.0)
        grant = self._memory.grants.get(human_id)
        if grant is None:
            raise UnknownHumanError(human_id)
        return grant

    def _servable(self, grant: Grant, now: float, min_ttl: float) -> bool:
        """True (and counted as served) if the token in hand has ``min_ttl`` left; False
        if a refresh could give one; NeedsReconsentError if nothing can."""
        policy = self.policy
        state = state_at(grant.state, grant.refresh_expires_at, now, policy)
        decision = serve_decision(state, grant.access_expires_at, now, min_ttl, policy.serve_margin)
        if decision is Serve.NEEDS_RECONSENT:
            raise NeedsReconsentError(grant.human_id, grant.last_error)
        if decision is Serve.SERVE:
            self._served.note(grant, now)
            return True
        return False

    def _fly(self, human_id: str, *, force: bool = False) -> Flight:
        """The refresh in flight for ``human_id``, starting one if there is none."""
        judged = self._memory.grants.get(human_id)
        return self._flights.fly(
            human_id, lambda: self._refreshing.refresh(human_id, force=force, judged=judged)
        )

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        """Load every grant, then keep them fresh until cancelled (``started`` once
        loaded; meanwhile :meth:`peek` answers from the store)."""
        await self._load()
        async with anyio.create_task_group() as tg:
            self._background.bind(tg)
            self._scheduler.start_workers(tg)
            self._served.loaded(self._memory.grants.get, self.clock.time())
            tg.start_soon(self._served.flush_loop)
            tg.start_soon(self._reloads.run)
            tg.start_soon(self._probe.run)
            task_status.started()
            await self._scheduler.loop()

    async def _load(self) -> None:
        memory, now = self._memory, self.clock.time()
        self._reloads.planned()  # what is placed below sees the instances as they are
        placing = Placing(
            now, self.policy, client_fault=memory.stats.client_fault,
            served_at=self.store.served_at, defer=self._coordination.defer, rng=self._rng,
        )  # fmt: skip
        with self._activity.busy():
            loader = await Loader.load(memory, now, placing, self.store, self._coordination)
        for grant in loader.changed:
            self._outcomes.announce_state(grant, state_reason(grant))
        self._scheduler.place_all(loader.deadlines)
        log_loaded(len(memory.grants), len(memory.interrupted), placing.live,
                   placing.capacity(self.budget.limit), self.budget.limit)  # fmt: skip

    async def _due(self, human_id: str, now: float) -> None:
        """A grant's deadline came: refresh it (ready it for a worker) or place it again."""
        try:
            grant = await self._outcomes.apply_clock(human_id, now)
            if grant is None:
                return
            if self._wants_refresh(grant, now):
                self._scheduler.make_ready(human_id, grant.access_expires_at)
                self._risk.watch(now)
            else:
                self._place(grant, now)
        except Exception as exc:  # noqa: BLE001 - a defect or the disk: this grant waits, the loop goes on
            self._refreshing.fault(human_id, "scheduling", exc)
            self._scheduler.place(human_id, now + self.policy.backoff_base)

    async def _work(self, human_id: str) -> None:
        """A worker took a ready grant: refresh it, unless that is no longer wanted."""
        self._risk.watch(self.clock.time())
        grant = self._memory.grants.get(human_id)
        if grant is None or not self._wants_refresh(grant, self.clock.time()):
            if grant is not None:
                self._place(grant, self.clock.time())
            return
        await self._fly(human_id).done.wait()

    def _wants_refresh(self, grant: Grant, now: float) -> bool:
        client_fault = self._memory.stats.client_fault
        idle = self._idle(grant, now)
        return decide.wants_refresh(grant, now, client_fault=client_fault, idle=idle)
