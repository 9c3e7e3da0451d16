"""Loading the grants at start: what an interrupted refresh and the clock mean for them,
and every grant's first deadline, in one pass each (100,000 grants load in well under a
second on the event loop)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace

import anyio

from haasd import refresh_policy as decide
from haasd.grants import Grant, Policy, after_clock
from haasd.grantstore import GrantStore
from haasd.refresher._memory import Memory

__all__ = ["Placing", "deadline_here", "load_grants"]


async def load_grants(
    memory: Memory, grants: Iterable[Grant], now: float, store: GrantStore, *, shared: bool
) -> list[Grant]:
    """Put ``grants`` in memory; the ones the clock moved (written, to be announced).

    A grant with an intent lost its last answer: it is retried promptly. The clock moved
    while haasd was down: its changes are written in one transaction — or, when other
    instances share the store, as status changes only, which never carry tokens over a
    refresh another instance may be writing at this moment.
    """
    held, policy, changed = memory.grants, memory.policy, []
    for grant in grants:
        if grant.intent is not None:
            memory.interrupted.add(grant.human_id)
            grant = replace(grant, next_refresh_at=now)
        held[grant.human_id] = grant
        if (moved := after_clock(grant, now, policy)) is not None:
            changed.append(moved)
    if not changed:
        return []
    with anyio.CancelScope(shield=True):
        if not shared:
            await store.put_grants(changed)
        for grant in changed if shared else ():
            await store.update_status(
                grant.human_id,
                state=grant.state,
                last_error=grant.last_error,
                consecutive_failures=grant.consecutive_failures,
                next_refresh_at=grant.next_refresh_at,
            )
    for grant in changed:
        held[grant.human_id] = grant
    return changed


def deadline_here(
    grant: Grant,
    now: float,
    policy: Policy,
    *,
    client_fault: str | None,
    idle: bool,
    defer: Callable[[str], float],
    startup: random.Random | None = None,
) -> float | None:
    """The grant's next deadline on this instance: :func:`haasd.refresh_policy.deadline`,
    deferred where the cluster gives the grant to another instance (``defer``)."""
    when = decide.deadline(
        grant, now, policy, client_fault=client_fault, idle=idle, startup=startup
    )
    # in a cluster, another instance may be the one for it; alone, ``when`` stays the
    # grant's own float (most often its next_refresh_at): no copy of it per grant
    if when is not None and (deferred := defer(grant.human_id)):
        when += deferred
    return when


class Placing:
    """Every loaded grant's first deadline (:meth:`deadlines`, one pass, handed straight
    to the scheduler: no list of them), and the figures logged once they are placed."""

    __slots__ = ("_client_fault", "_defer", "_lifetimes", "_now", "_policy", "_rng",
                 "_served_at", "live")  # fmt: skip

    def __init__(
        self,
        now: float,
        policy: Policy,
        *,
        client_fault: str | None,
        served_at: Callable[[str], float | None],
        defer: Callable[[str], float],
        rng: random.Random,
    ) -> None:
        self._now = now
        self._policy = policy
        self._client_fault = client_fault
        self._served_at = served_at
        self._defer = defer
        self._rng = rng
        #: the grants placed that are refreshed ahead (not dormant)
        self.live = 0
        # the access-token lifetimes seen, and how many grants had each
        self._lifetimes: Counter[float | None] = Counter()

    def deadlines(self, grants: Iterable[Grant]) -> Iterator[tuple[str, float | None]]:
        """Each grant's human id and first deadline (None: it has none), overdue refreshes
        spread by ``rng`` (see :func:`haasd.refresh_policy.deadline`)."""
        now, policy, served_at = self._now, self._policy, self._served_at
        for grant in grants:
            human_id = grant.human_id
            idle = decide.is_idle(grant, served_at(human_id), now, policy)
            self.live += not idle
            self._lifetimes[decide.lifetime_of(grant, None)] += 1
            yield human_id, deadline_here(
                grant, now, policy, client_fault=self._client_fault, idle=idle,
                defer=self._defer, startup=self._rng,
            )  # fmt: skip

    def capacity(self, requests_per_minute: int) -> int:
        """The grants a budget of ``requests_per_minute`` keeps fresh, given the typical
        access-token lifetime of the grants placed (:mod:`haasd.refresh_policy`)."""
        lifetime = decide.typical_lifetime(self._lifetimes.elements())
        return decide.capacity(requests_per_minute, self._policy.refresh_fraction, lifetime)
