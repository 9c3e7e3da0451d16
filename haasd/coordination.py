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
grant shares the engine's memory, so a publication only tells the local subscribers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

__all__ = ["Coordination", "InProcess", "Permit"]

#: called with the human id whose grant changed
OnChange = Callable[[str], None]


@dataclass(frozen=True, slots=True)
class Permit:
    """Leave to refresh one grant, until released (or, for a lease, until ``expires_at``)."""

    human_id: str
    #: whoever holds it (an instance's name; "local" in process)
    holder: str
    #: when a lease ends by itself (wall-clock), or None: held until released
    expires_at: float | None = None


class Coordination(Protocol):
    """Who may refresh a grant now, and telling the others that it changed."""

    async def acquire(self, human_id: str) -> Permit | None:
        """Leave to refresh ``human_id``'s grant now, or None if another holds it."""
        ...

    async def release(self, permit: Permit) -> None:
        """Give the permit back (idempotent)."""
        ...

    async def publish(self, human_id: str) -> None:
        """Tell the others that ``human_id``'s grant changed in the store."""
        ...

    def subscribe(self, on_change: OnChange) -> None:
        """Call ``on_change`` for each grant another party published as changed."""
        ...


class InProcess:
    """One haasd: every permit is granted (the engine's single flight keeps one refresh
    per grant); a publication goes to the local subscribers only."""

    __slots__ = ("_held", "_subscribers")

    def __init__(self) -> None:
        self._held: set[str] = set()
        self._subscribers: list[OnChange] = []

    async def acquire(self, human_id: str) -> Permit | None:
        self._held.add(human_id)
        return Permit(human_id, "local")

    async def release(self, permit: Permit) -> None:
        self._held.discard(permit.human_id)

    async def publish(self, human_id: str) -> None:
        for on_change in list(self._subscribers):
            on_change(human_id)

    def subscribe(self, on_change: OnChange) -> None:
        self._subscribers.append(on_change)

    @property
    def held(self) -> frozenset[str]:
        """The grants whose permit is out now (for tests and health)."""
        return frozenset(self._held)
