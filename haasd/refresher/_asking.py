"""Whether a refresh a caller asked for may start now: the gate before the single flight.

:func:`haasd.refresh_policy.admission` decides from plain figures; this gate reads them
(the rate budget, haasd's client fault, the lifetime the server grants), counts a
refusal against the peer that asked (:class:`~haasd.demand.OnDemand`) and raises it.
"""

from __future__ import annotations

from collections.abc import Callable

import structlog

from haasd import refresh_policy as decide
from haasd.clock import Clock
from haasd.demand import OnDemand, Refusal, RefusalReason
from haasd.errors import TokenUnavailableError
from haasd.grants import Grant
from haasd.ratelimit import RateBudget
from haasd.refresher._memory import Memory

_log = structlog.get_logger("haasd.refresher")

#: is this grant dormant at this time?
Idle = Callable[[Grant, float], bool]


class Gate:
    """Raises :class:`TokenUnavailableError` for a refresh that may not start now."""

    def __init__(
        self, memory: Memory, *, demand: OnDemand, budget: RateBudget, clock: Clock, idle: Idle
    ) -> None:
        self._memory = memory
        self._demand = demand
        self._budget = budget
        self._clock = clock
        self._idle = idle

    def admit(
        self, grant: Grant, now: float, min_ttl: float, wait: float, peer: int | None
    ) -> None:
        """A refresh for a caller wanting ``min_ttl``, who waits at most ``wait``."""
        admission = decide.admission(
            grant,
            now,
            self._memory.policy,
            min_ttl=min_ttl,
            wait=wait,
            client_fault=self._memory.stats.client_fault,
            lifetime=decide.lifetime_of(grant, self._memory.lifetime),
            budget_ready_in=self._budget.ready_in(),
            rate_blocked=self._budget.blocked_until is not None,
            idle=self._idle(grant, now),
        )
        if admission.admit is decide.Admit.IMPOSSIBLE:
            refusal = Refusal(RefusalReason.IMPOSSIBLE, admission.message, admission.retry_after)
            counted = self._demand.refuse(peer, self._clock.monotonic(), refusal)
            raise self._refused(grant, counted, peer)
        _raise_if_refused(grant, admission)
        if admission.admit is decide.Admit.ASK_DEMAND:
            self._ask_demand(grant, peer)

    def admit_admin(self, grant: Grant, wait: float, peer: int | None) -> None:
        """An admin's refresh: whatever the schedule says, within budget and the share."""
        budget = self._budget
        ready_in, blocked = budget.ready_in(), budget.blocked_until is not None
        _raise_if_refused(grant, decide.budget_admission(ready_in, wait, rate_blocked=blocked))
        self._ask_demand(grant, peer)

    def _ask_demand(self, grant: Grant, peer: int | None) -> None:
        policy = self._memory.policy
        refusal = self._demand.admit(
            grant.human_id,
            peer,
            self._clock.monotonic(),
            capacity=self._budget.instance_capacity,  # in a cluster: this one's part
            share=policy.on_demand_share,
            cooldown=policy.on_demand_cooldown,
        )
        if refusal is not None:
            raise self._refused(grant, refusal, peer)

    def _refused(self, grant: Grant, refusal: Refusal, peer: int | None) -> TokenUnavailableError:
        count = self._demand.refusals_of(peer, self._clock.monotonic())
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


def _raise_if_refused(grant: Grant, admission: decide.Admission) -> None:
    if admission.refused:
        raise TokenUnavailableError(grant.human_id, admission.message, admission.retry_after)


def _milestone(count: int) -> bool:
    """1, 10, 100, 1000, ...: when a growing count is worth a log line."""
    while count >= 10 and count % 10 == 0:
        count //= 10
    return count == 1
