"""Loading the grants at start: what an interrupted refresh and the clock mean for them,
and every grant's first deadline, in one pass as the store reads them (off the event
loop), each grant kept packed (:mod:`haasd.grantpack`)."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Final

import anyio
import anyio.lowlevel

from haasd import refresh_policy as decide
from haasd.coordination import Coordination
from haasd.grantpack import GrantTable, Sealed
from haasd.grants import Grant, Policy, after_clock, state_at
from haasd.grantstore import GrantStore
from haasd.refresher._memory import Memory

__all__ = ["OPEN_BATCH", "Loader", "Placing", "deadline_here", "open_sealed"]

#: sealed rows opened per turn of the event loop after start (a few milliseconds)
OPEN_BATCH: Final = 256


class Loader:
    """Every grant read at start, a chunk at a time (:meth:`take`, in the store's worker
    thread): into memory (packed, tokens still sealed where the row allows: see
    :mod:`haasd.grantpack`), with what an interrupted refresh and the clock mean for it,
    and its first deadline — one pass, no Grant kept beyond its chunk."""

    __slots__ = ("_memory", "_moved", "_now", "_placing", "changed", "deadlines")

    def __init__(self, memory: Memory, now: float, placing: Placing) -> None:
        self._memory = memory
        self._now = now
        self._placing = placing
        self._moved: list[str] = []
        #: the grants the clock moved while haasd was down (to write, then announce)
        self.changed: list[Grant] = []
        #: each grant's human id and first deadline, for the scheduler
        self.deadlines: list[tuple[str, float | None]] = []

    @classmethod
    async def load(
        cls, memory: Memory, now: float, placing: Placing, store: GrantStore,
        coordination: Coordination,
    ) -> Loader:  # fmt: skip
        """Every grant of ``store`` into ``memory``; the clock's changes written."""
        loader = cls(memory, now, placing)
        memory.grants.opener = store.opener
        await store.read_grants(loader.take)
        loader.moved_sealed()
        await loader.write_changed(store, shared=coordination.shared)
        return loader

    def take(self, chunk: list[Grant | Sealed]) -> None:
        """A grant with an intent lost its last answer: it is retried promptly. A sealed
        row the clock moved is left for :meth:`moved_sealed` (opening it may quarantine
        it, which the store notes only once it has read every row)."""
        memory, now, policy = self._memory, self._now, self._memory.policy
        held, kept = memory.grants, list[decide.Timed]()
        for item in chunk:
            if isinstance(item, Sealed):
                held.put_sealed(item)
                if state_at(item.state, item.refresh_expires_at, now, policy) is item.state:
                    kept.append(item)
                else:
                    self._moved.append(item.human_id)
                continue
            grant = item
            if grant.intent is not None:
                memory.interrupted.add(grant.human_id)
                grant = replace(grant, next_refresh_at=now)
            if (moved := after_clock(grant, now, policy)) is not None:
                self.changed.append(moved)
                grant = moved
            held[grant.human_id] = grant
            kept.append(grant)
        self.deadlines += self._placing.deadlines(kept)

    def moved_sealed(self) -> None:
        """The sealed rows the clock moved while haasd was down: opened, moved, placed."""
        held, now, policy = self._memory.grants, self._now, self._memory.policy
        kept = []
        for human_id in self._moved:
            grant = held[human_id]
            if (moved := after_clock(grant, now, policy)) is not None:
                self.changed.append(moved)
                held[human_id] = grant = moved
            kept.append(grant)
        self._moved.clear()
        self.deadlines += self._placing.deadlines(kept)

    async def write_changed(self, store: GrantStore, *, shared: bool) -> None:
        """Write what the clock moved, in one transaction — or, when other instances share
        the store, as status changes only, which never carry tokens over a refresh another
        instance may be writing at this moment."""
        if not self.changed:
            return
        with anyio.CancelScope(shield=True):
            if not shared:
                await store.put_grants(self.changed)
            for grant in self.changed if shared else ():
                await store.update_status(
                    grant.human_id,
                    state=grant.state,
                    last_error=grant.last_error,
                    consecutive_failures=grant.consecutive_failures,
                    next_refresh_at=grant.next_refresh_at,
                )


async def open_sealed(grants: GrantTable) -> None:
    """Open every token still sealed since loading, a batch at a time between requests:
    a row that does not open is quarantined within seconds of the start, not only when
    its human is first asked for."""
    while grants.open_sealed(OPEN_BATCH):
        await anyio.lowlevel.checkpoint()


def deadline_here(
    grant: decide.Timed,
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

    def deadlines(self, grants: Iterable[decide.Timed]) -> Iterator[tuple[str, float | None]]:
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
