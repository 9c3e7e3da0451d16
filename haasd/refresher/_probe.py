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

import anyio
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


class ClientProbe:
    """Run :meth:`run` beside the engine; :meth:`rejected` when the server rejects the
    client; ``try_one`` refreshes one grant, forced."""

    __slots__ = ("_clock", "_memory", "_rejected", "_try_one")

    def __init__(
        self, memory: Memory, clock: Clock, try_one: Callable[[str], Awaitable[None]]
    ) -> None:
        self._memory = memory
        self._clock = clock
        self._try_one = try_one
        self._rejected = anyio.Event()

    def rejected(self) -> None:
        """The server just rejected haasd's client (``stats.client_fault`` is set)."""
        self._rejected.set()

    async def run(self) -> None:
        """Asleep until a rejection (no wakeups while all is well), then one try after
        :data:`PROBE_FIRST`, twice as long after each try that is rejected again."""
        while True:
            if self._memory.stats.client_fault is None:
                self._rejected = anyio.Event()
                await self._rejected.wait()
            gap = PROBE_FIRST
            while self._memory.stats.client_fault is not None:
                await self._clock.sleep(gap)
                if self._memory.stats.client_fault is None:
                    break
                await self._try()
                gap = min(2 * gap, PROBE_CAP)

    async def _try(self) -> None:
        human_id = self._candidate()
        if human_id is not None:
            _log.info("trying one refresh: does the token endpoint accept haasd's client again?",
                      human_id=human_id)  # fmt: skip
            await self._try_one(human_id)

    def _candidate(self) -> str | None:
        """The live grant whose access token ends first: the one a success helps most."""
        live = (t for t in self._memory.grants.times() if t.state is not State.NEEDS_RECONSENT)
        first = min(live, key=lambda t: t.access_expires_at, default=None)
        return None if first is None else first.human_id
