"""The refresh engine's two queues, as plain data (no I/O, no clock of its own).

* **Deadlines**: one heap entry per grant — the next instant something may happen to it
  (a refresh falls due, the re-consent warning or the refresh-token limit arrives).
  Re-placing a grant bumps its version; stale entries are skipped when they surface, so a
  move is O(log n) and nothing is ever searched.
* **Ready**: grants whose refresh is due, ordered by access-token expiry, so when demand
  exceeds the rate budget the token that ends first is refreshed first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterator

__all__ = ["Schedule"]


class Schedule:
    __slots__ = ("_deadlines", "_ready", "_seq", "_versions")

    def __init__(self) -> None:
        self._deadlines: list[tuple[float, int, str, int]] = []  # (when, seq, human, version)
        self._versions: dict[str, int] = {}
        self._ready: list[tuple[float, int, str]] = []  # (access expiry, seq, human)
        self._seq = itertools.count()

    # --- deadlines ----------------------------------------------------------------------

    def place(self, human_id: str, when: float) -> bool:
        """Put the grant's one entry at ``when``; True if it is now the earliest."""
        version = self._versions.get(human_id, 0) + 1
        self._versions[human_id] = version
        heapq.heappush(self._deadlines, (when, next(self._seq), human_id, version))
        return when <= self._deadlines[0][0]

    def drop(self, human_id: str) -> None:
        """Forget the grant's entry (it surfaces later as stale and is skipped)."""
        self._versions.pop(human_id, None)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def pop_due(self, now: float) -> Iterator[str]:
        """Every grant whose entry is due at ``now``, earliest first (each entry once)."""
        while self._deadlines and self._deadlines[0][0] <= now:
            _, _, human_id, version = heapq.heappop(self._deadlines)
            if self._versions.get(human_id) == version:
                yield human_id

    # --- ready to refresh ---------------------------------------------------------------

    def make_ready(self, human_id: str, access_expires_at: float) -> None:
        heapq.heappush(self._ready, (access_expires_at, next(self._seq), human_id))

    def take_ready(self) -> str | None:
        """The waiting grant whose access token ends first, or None."""
        return heapq.heappop(self._ready)[2] if self._ready else None

    @property
    def backlog(self) -> int:
        return len(self._ready)

    def ready_expiries(self) -> list[float]:
        """The waiting grants' access-token expiries, earliest first."""
        return sorted(expiry for expiry, _, _ in self._ready)
