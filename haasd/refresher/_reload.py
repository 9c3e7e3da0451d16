"""What other instances changed: re-reading grants from a shared store.

:class:`Reloads` is the engine's :class:`~haasd.coordination.Listener`. The coordination
tells it — from its own tasks, without waiting — that a grant changed, that every grant
may have (a reconnect), or that the live instances changed; :meth:`Reloads.run` does the
reading, one grant at a time or all at once, and hands each grant read to ``adopt``.
A refresh waiting for another instance's result (:meth:`Reloads.wait`) wakes when the
grant was read again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Final

import anyio
import structlog

from haasd.clock import Clock
from haasd.demand import OnDemand
from haasd.errors import StoreError, UnknownHumanError
from haasd.events import Event, EventBus
from haasd.grants import Grant
from haasd.grantstore import GrantStore
from haasd.refresher._memory import Memory
from haasd.refresher._outcome import Outcomes, state_reason
from haasd.timefmt import rfc3339

__all__ = ["Adoption", "Reloads", "newer"]

_log: Final = structlog.get_logger("haasd.refresher")

#: keep a grant read from the store (or None: it is gone)
Adopt = Callable[[str, Grant | None], None]
#: (re)place a grant's deadline, judged at a time; forget a grant's deadline
Place = Callable[[Grant, float], None]
Drop = Callable[[str], None]
#: place every grant's deadline again
Replan = Callable[[], None]
#: the humans whose grants are in memory
Known = Callable[[], Iterable[str]]
#: grants re-read in one statement at most
BATCH: Final = 500
#: how long a failed re-read waits before it is tried again (seconds)
RETRY_AFTER: Final = 1.0


class Reloads:
    """Grants to read again, and the refreshes waiting for them (see the module)."""

    def __init__(self, store: GrantStore, *, adopt: Adopt, replan: Replan, known: Known) -> None:
        self._store = store
        self._adopt = adopt
        self._known = known
        self._replan = replan
        self._pending: set[str] = set()
        self._everything = False
        self._plan = False
        self._wakeup = anyio.Event()
        self._waiting: dict[str, anyio.Event] = {}

    # -- the Listener protocol (no I/O) ---------------------------------------------------

    def changed(self, human_id: str) -> None:
        self._pending.add(human_id)
        self._wakeup.set()

    def released(self, human_id: str) -> None:
        if human_id in self._waiting:  # only a refresh waiting for the holder cares
            self.changed(human_id)

    def resync(self) -> None:
        self._everything = True
        self._wakeup.set()

    def replan(self) -> None:
        self._plan = True
        self._wakeup.set()

    def planned(self) -> None:
        """Every grant was just placed with the live instances as they are now: a replan
        asked for before that has nothing left to do."""
        self._plan = False

    # -- waiting for another instance -----------------------------------------------------

    async def wait(self, human_id: str, seconds: float) -> bool:
        """Wait until ``human_id``'s grant was read again after a change; False if none
        came within ``seconds``."""
        event = self._waiting.setdefault(human_id, anyio.Event())
        with anyio.move_on_after(seconds):
            await event.wait()
            return True
        return False

    def _woken(self, human_id: str) -> None:
        event = self._waiting.pop(human_id, None)
        if event is not None:
            event.set()

    # -- reading --------------------------------------------------------------------------

    async def reread(self, human_id: str) -> Grant | None:
        """Read ``human_id``'s grant now, keep it (``adopt``), and return it (None: gone)."""
        try:
            grant: Grant | None = await self._store.get_grant(human_id, warn=False)
        except UnknownHumanError:
            grant = None
        self._adopt(human_id, grant)
        self._woken(human_id)
        return grant

    async def run(self) -> None:
        """Read what was noted, until cancelled; a store error retries shortly."""
        while True:
            await self._wakeup.wait()
            self._wakeup = anyio.Event()
            try:
                await self._read_noted()
            except StoreError as exc:
                _log.warning("cannot re-read changed grants yet", error=str(exc))
                await anyio.sleep(RETRY_AFTER)
                self._wakeup.set()

    async def _read_noted(self) -> None:
        if self._everything:
            self._everything = False
            try:
                await self._read_all()
            except BaseException:
                self._everything = True
                raise
        if self._plan:
            self._plan = False
            self._replan()
        while self._pending:
            batch = sorted(self._pending)[:BATCH]  # one statement for many changes
            self._pending.difference_update(batch)
            try:
                found = await self._store.get_grants(batch, warn=False)
            except BaseException:
                self._pending.update(batch)
                raise
            grants = {grant.human_id: grant for grant in found}
            for human_id in batch:
                self._adopt(human_id, grants.get(human_id))
                self._woken(human_id)

    async def _read_all(self) -> None:
        grants = {g.human_id: g for g in await self._store.list_grants(warn=False)}
        gone = [h for h in self._known() if h not in grants]
        for human_id, grant in grants.items():
            self._adopt(human_id, grant)
            self._woken(human_id)
        for human_id in gone:
            self._adopt(human_id, None)
            self._woken(human_id)
        self._pending.difference_update(grants)
        _log.info("re-read every grant from the shared store", grants=len(grants))


class Adoption:
    """Keeps a grant another instance changed, as read from the shared store."""

    def __init__(
        self,
        memory: Memory,
        *,
        clock: Clock,
        place: Place,
        drop: Drop,
        demand: OnDemand,
        events: EventBus,
        outcomes: Outcomes,
    ) -> None:
        self._memory = memory
        self._clock = clock
        self._place = place
        self._drop = drop
        self._demand = demand
        self._events = events
        self._outcomes = outcomes

    def __call__(self, human_id: str, grant: Grant | None) -> None:
        """Keep ``grant`` (None: it was deleted); a read older than memory's is ignored.
        A newer token is announced here too: this instance's apps hear of it."""
        memory, now = self._memory, self._clock.time()
        old = memory.grants.get(human_id)
        if grant is None:
            if memory.grants.pop(human_id, None) is not None:
                self._drop(human_id)
                memory.forget(human_id)
                self._demand.forget(human_id)
            return
        if old is not None and newer(old, grant):
            return
        memory.grants[human_id] = grant
        if old is None or old.consented_at != grant.consented_at:
            memory.forget(human_id)
            self._demand.forget(human_id)
        self._place(grant, now)
        if old is not None and newer(grant, old) and grant.consented_at == old.consented_at:
            self._demand.refreshed_elsewhere(human_id, self._clock.monotonic())
        if old is not None and grant.access_expires_at > old.access_expires_at:
            details = {"expires_at": rfc3339(grant.access_expires_at), "elsewhere": True}
            self._events.publish(Event("token.refreshed", human_id, now, details))
        if old is not None and grant.state is not old.state:
            self._outcomes.announce_state(grant, grant.last_error or state_reason(grant))


def newer(one: Grant, other: Grant) -> bool:
    """Whether ``one`` is a later state of the grant than ``other``: a later consent, or
    a later refresh of the same consent."""
    return _age(one) > _age(other)


def _age(grant: Grant) -> tuple[float, float]:
    return (grant.consented_at, grant.last_refresh_at or 0.0)
