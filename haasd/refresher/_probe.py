"""Trying again when the token endpoint rejects haasd's client.

While the server rejects the client itself (``invalid_client``, ``unauthorized_client``,
``invalid_request``, …) no grant is refreshed: every request would fail the same way and
spend the rate budget. But the cause may pass — the credentials fixed at the server, an
identity provider's incident — with nobody there to reload haasd, and every access token
would end within the hour. So one refresh is tried now and then: :data:`PROBE_FIRST`
after the rejection, then twice as long each time, at most :data:`PROBE_CAP` apart. The
first that is accepted resumes refreshing for every grant
(:meth:`haasd.refresher._outcome.Outcomes.succeeded`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

import structlog

from haasd.clock import Clock
from haasd.grants import State
from haasd.refresher._memory import Memory

__all__ = ["PROBE_CAP", "PROBE_FIRST", "ClientProbe"]

_log: Final = structlog.get_logger("haasd.refresher")

#: the first try after the rejection (longer than a deploy of new credentials takes)
PROBE_FIRST: Final = 900.0
#: the longest gap between tries
PROBE_CAP: Final = 3600.0
#: how often the loop looks whether the client is rejected
LOOK_EVERY: Final = 60.0


class ClientProbe:
    """Run :meth:`run` beside the engine; ``try_one`` refreshes one grant, forced."""

    __slots__ = ("_clock", "_gap", "_memory", "_next", "_try_one")

    def __init__(
        self, memory: Memory, clock: Clock, try_one: Callable[[str], Awaitable[None]]
    ) -> None:
        self._memory = memory
        self._clock = clock
        self._try_one = try_one
        self._gap = PROBE_FIRST
        self._next: float | None = None  # when the next try is due (None: not rejected)

    async def run(self) -> None:
        while True:
            await self._clock.sleep(LOOK_EVERY)
            await self.look()

    async def look(self) -> None:
        """One look: note a new rejection, or try one refresh if a try is due."""
        now = self._clock.time()
        if self._memory.stats.client_fault is None:
            self._next, self._gap = None, PROBE_FIRST
            return
        if self._next is None:
            self._next = now + self._gap
            return
        if now < self._next:
            return
        human_id = self._candidate()
        if human_id is not None:
            _log.info("trying one refresh: does the token endpoint accept haasd's client again?",
                      human_id=human_id)  # fmt: skip
            await self._try_one(human_id)
        if self._memory.stats.client_fault is not None:
            self._gap = min(2 * self._gap, PROBE_CAP)
            self._next = self._clock.time() + self._gap

    def _candidate(self) -> str | None:
        """The live grant whose access token ends first: the one a success helps most."""
        live = (t for t in self._memory.grants.times() if t.state is not State.NEEDS_RECONSENT)
        first = min(live, key=lambda t: t.access_expires_at, default=None)
        return None if first is None else first.human_id
