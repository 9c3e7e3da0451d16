"""What the engine knows, in memory, shared by its parts (and nothing else holds)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Final

from haasd.grantpack import GrantTable
from haasd.grants import Policy, State
from haasd.refresher._stats import RefresherStats

__all__ = ["LIFETIMES_KEPT", "Memory"]

#: how many of the server's last answers the lifetime it grants is judged by
LIFETIMES_KEPT: Final = 8


@dataclass(slots=True)
class Memory:
    """The grants and the engine's notes about them.

    ``policy`` is the one refresh policy in force: a reload replaces it here, and every
    part reads it from here for each decision.
    """

    policy: Policy
    grants: GrantTable = field(default_factory=GrantTable)
    stats: RefresherStats = field(default_factory=RefresherStats)
    #: humans whose last answer may have been lost (a refusal then means an interrupted
    #: rotation)
    interrupted: set[str] = field(default_factory=set)
    #: humans whose handling met an unexpected error, and what it was (for health)
    faults: dict[str, str] = field(default_factory=dict)
    #: humans whose last refresh failed and will be tried again (see failing_expired)
    failing: set[str] = field(default_factory=set)
    #: the access-token lifetimes the server granted in its last answers, any grant
    lifetimes: deque[float] = field(default_factory=lambda: deque(maxlen=LIFETIMES_KEPT))

    @property
    def lifetime(self) -> float | None:
        """The lifetime the server grants (seconds): the longest of its last answers. One
        short answer — a reuse-grace replay repeats a token with the time it has left —
        does not make a min_ttl look impossible; a lasting change is learnt within
        :data:`LIFETIMES_KEPT` answers."""
        return max(self.lifetimes, default=None)

    def failing_expired(self, now: float) -> dict[str, str]:
        """The grants whose access token has ended while their refresh keeps failing —
        apps asking for them get no token — and why the last try failed. A grant since
        refreshed (here or, in a cluster, elsewhere), refused or gone leaves the set."""
        found: dict[str, str] = {}
        for human_id in list(self.failing):
            grant = self.grants.get(human_id)
            if (
                grant is None
                or not grant.consecutive_failures
                or grant.state is State.NEEDS_RECONSENT
            ):
                self.failing.discard(human_id)
            elif grant.access_expires_at <= now:
                found[human_id] = grant.last_error or "unknown"
        return found

    def forget(self, human_id: str) -> None:
        """A new consent or a delete: nothing noted about the old grant still holds."""
        self.interrupted.discard(human_id)
        self.failing.discard(human_id)
        self.faults.pop(human_id, None)
