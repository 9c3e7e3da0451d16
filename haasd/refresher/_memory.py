"""What the engine knows, in memory, shared by its parts (and nothing else holds)."""

from __future__ import annotations

from dataclasses import dataclass, field

from haasd.grants import Grant, Policy
from haasd.refresher._stats import RefresherStats

__all__ = ["Memory"]


@dataclass(slots=True)
class Memory:
    """The grants and the engine's notes about them.

    ``policy`` is the one refresh policy in force: a reload replaces it here, and every
    part reads it from here for each decision.
    """

    policy: Policy
    grants: dict[str, Grant] = field(default_factory=dict)
    stats: RefresherStats = field(default_factory=RefresherStats)
    #: humans whose last answer may have been lost (a refusal then means an interrupted
    #: rotation)
    interrupted: set[str] = field(default_factory=set)
    #: humans whose handling met an unexpected error, and what it was (for health)
    faults: dict[str, str] = field(default_factory=dict)
    #: the access-token lifetime the server last granted, any grant (seconds)
    lifetime: float | None = None

    def forget(self, human_id: str) -> None:
        """A new consent or a delete: nothing noted about the old grant still holds."""
        self.interrupted.discard(human_id)
        self.faults.pop(human_id, None)
