"""The wall clock set back under a running engine: every instant held moves with it.

The engine holds wall-clock instants read off this host's clock: when a token ends, when
it is refreshed next, the refresh token's limit. Set that clock back and each of them
lies as much later as it went back — a token is served, and its refresh put off, for that
long after the server (whose clock did not move) ended it. A clock set back shows as the
distance from the wall clock to the monotonic clock shrinking (nothing else moves it: NTP
slews both alike), so :meth:`ClockSteps.check` — on every token asked for and every turn
of the scheduler — moves every instant held back by as much, and the schedule with them:
each stays the same moment in real time.

A clock set forward, or a host waking from suspend (the monotonic clock stood still
meanwhile), widens the distance instead: instants then look nearer than they are, which
only ever refreshes early, so they stay. The store's copies are written over by each
grant's next refresh.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Final

import structlog

from haasd.clock import Clock
from haasd.grants import Grant
from haasd.refresher._memory import Memory

__all__ = ["STEP_TOLERANCE", "ClockSteps", "shifted"]

_log = structlog.get_logger("haasd.refresher")

#: a change of the wall clock's distance to the monotonic clock smaller than this (in
#: seconds) is no setting of the clock (two clocks read one after the other)
STEP_TOLERANCE: Final = 1.0


def _by(at: float | None, delta: float) -> float | None:
    return None if at is None else at + delta


def shifted(grant: Grant, delta: float) -> Grant:
    """``grant`` with every instant it holds moved by ``delta`` seconds."""
    intent = grant.intent
    return replace(
        grant,
        access_expires_at=grant.access_expires_at + delta,
        refresh_expires_at=grant.refresh_expires_at + delta,
        consented_at=grant.consented_at + delta,
        last_refresh_at=_by(grant.last_refresh_at, delta),
        next_refresh_at=_by(grant.next_refresh_at, delta),
        last_served_at=_by(grant.last_served_at, delta),
        intent=None if intent is None else replace(intent, started_at=intent.started_at + delta),
    )


class ClockSteps:
    """Watches the wall clock's distance to the monotonic clock; when it was set back,
    moves every grant in ``memory`` with it and calls ``replan``."""

    __slots__ = ("_clock", "_memory", "_offset", "_replan")

    def __init__(self, clock: Clock, memory: Memory, *, replan: Callable[[], None]) -> None:
        self._clock = clock
        self._memory = memory
        self._replan = replan
        self._offset = clock.time() - clock.monotonic()

    def check(self) -> None:
        """Synchronous and cheap (two clock reads) unless the clock was set back."""
        offset = self._clock.time() - self._clock.monotonic()
        delta = offset - self._offset
        if abs(delta) < STEP_TOLERANCE:
            return
        self._offset = offset
        if delta > 0:  # set forward, or a suspend: instants only look nearer
            return
        grants = self._memory.grants
        for grant in grants.values():
            grants[grant.human_id] = shifted(grant, delta)
        _log.warning(
            "the wall clock was set back: every token's end and every refresh moved with it",
            seconds=round(-delta, 3),
            grants=len(grants),
        )
        self._replan()
