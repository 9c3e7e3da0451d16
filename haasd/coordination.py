"""Who may refresh a grant now, and how others learn of a new token: :class:`Coordination`.

A refresh token may be spent once. One haasd keeps that promise by itself — at most one
refresh per grant is in flight (the engine's single flight) — but several instances
sharing one store must also agree which of them spends it. The engine asks for every
refresh, in this order:

1. :meth:`Coordination.acquire` a :class:`Permit` for the grant — or None: another holder
   refreshes it now, and this instance waits for the token that refresh writes;
2. spend the refresh token, write the outcome (conditional on the intent,
   :mod:`haasd.grantstore`);
3. :meth:`Coordination.publish` that the grant changed, so that others re-read it;
4. :meth:`Coordination.release` the permit (always, even after a failure).

:class:`InProcess` is the first implementation, for one haasd: the single flight already
keeps refreshes of a grant apart, so a permit is always granted, and every reader of the
grant shares the engine's memory, so a publication tells nobody.
:class:`haasd.pgstore.PgCoordination` is the second, for several instances on one
PostgreSQL store: a permit is a lease taken on the database's clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from haasd.health import Instance

if TYPE_CHECKING:
    from anyio.abc import TaskStatus

    from haasd.ratelimit import SharedBudget

__all__ = ["Coordination", "InProcess", "Instance", "Listener", "Permit"]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to refresh one grant, until released (or, for a lease, until it ends)."""

    human_id: str
    #: whoever holds it (an instance's name; "local" in process)
    holder: str
    #: when a lease ends by itself (wall-clock, the database's), or None: held until released
    expires_at: float | None = None


class Listener(Protocol):
    """What the refresh engine hears from the others (called from the coordination's
    tasks; each call only notes the work, it does no I/O)."""

    def changed(self, human_id: str) -> None:
        """Another instance changed (or deleted) ``human_id``'s grant: re-read it."""

    def released(self, human_id: str) -> None:
        """Another instance gave back ``human_id``'s lease (a refresh waiting for it may
        look again)."""

    def resync(self) -> None:
        """Changes may have been missed (a reconnect): re-read every grant."""

    def replan(self) -> None:
        """The live instances changed: place every grant's deadline again (:meth:`defer`)."""


class Coordination(Protocol):
    """Who may refresh a grant now, and telling the others that it changed."""

    @property
    def shared(self) -> bool:
        """True when other instances share the store: a grant is re-read before a refresh."""
        ...

    @property
    def instance_id(self) -> str | None:
        """This instance's name in the cluster (None: one haasd on its own)."""
        ...

    @property
    def rate(self) -> SharedBudget | None:
        """The rate budget the instances spend together (None: one haasd on its own)."""
        ...

    async def run(self, *, task_status: TaskStatus[None] = ...) -> None:
        """Take part (heartbeats, listening) until cancelled; started once able to hear
        the others, before the engine loads the grants."""
        ...

    async def acquire(self, human_id: str) -> Permit | None:
        """Leave to refresh ``human_id``'s grant now, or None if another holds it."""
        ...

    def held(self, permit: Permit) -> bool:
        """Whether the permit is still surely held (a lease: renewed recently enough by the
        local monotonic clock, with a margin): no request is sent without it."""
        ...

    async def release(self, permit: Permit) -> None:
        """Give the permit back (idempotent)."""
        ...

    async def publish(self, human_id: str) -> None:
        """Tell the others that ``human_id``'s grant changed in the store."""
        ...

    def subscribe(self, listener: Listener) -> None:
        """Tell ``listener`` of each grant another party changed (and of resyncs)."""
        ...

    def defer(self, human_id: str) -> float:
        """Seconds to add to the grant's scheduled refresh here: 0 on the instance the
        cluster's spread gives it to, a fallback delay on the others."""
        ...

    @property
    def wait(self) -> float:
        """How long to wait for another holder's refresh before trying again."""
        ...

    def problem(self) -> str | None:
        """Why this instance cannot take part in the cluster now (health), or None."""
        ...

    def instances(self) -> Sequence[Instance]:
        """The live instances (empty for one haasd on its own)."""
        ...


class InProcess:
    """One haasd: every permit is granted (the engine's single flight keeps one refresh
    per grant); a publication has nobody to tell."""

    __slots__ = ("_held",)

    shared = False
    instance_id: str | None = None
    rate: SharedBudget | None = None
    wait = 0.0

    def __init__(self) -> None:
        self._held: set[str] = set()

    async def run(self, *, task_status: TaskStatus[None] | None = None) -> None:
        if task_status is not None:
            task_status.started()  # nobody else to hear

    async def acquire(self, human_id: str) -> Permit | None:
        self._held.add(human_id)
        return Permit(human_id, "local")

    def held(self, permit: Permit) -> bool:
        return permit.human_id in self._held

    async def release(self, permit: Permit) -> None:
        self._held.discard(permit.human_id)

    async def publish(self, human_id: str) -> None:
        """Nothing to do: the engine that wrote the grant is its only reader."""

    def subscribe(self, listener: Listener) -> None:
        """Nothing to hear: no other party changes the grants."""

    def defer(self, human_id: str) -> float:
        return 0.0

    def problem(self) -> str | None:
        return None

    def instances(self) -> Sequence[Instance]:
        return ()

    @property
    def held_now(self) -> frozenset[str]:
        """The grants whose permit is out now (for tests and health)."""
        return frozenset(self._held)
