"""The refresh engine's two queues, as plain data (no I/O, no clock of its own).

* **Deadlines**: one heap entry per grant — the next instant something may happen to it
  (a refresh falls due, the re-consent warning or the refresh-token limit arrives).
  An entry is ``(when, human)``; it is live while the grant's deadline is that very
  ``when`` object (its identity is the entry's version, and an older entry holding the
  same object is due at the same instant: whichever surfaces first fires, once).
  Re-placing a grant leaves its old entries stale; they are skipped when they surface, so
  a move is O(log n) and nothing is ever searched. Placing every grant at start is one
  O(n) heapify (:meth:`Schedule.place_all`).
* **Ready**: grants whose refresh is due, ordered by access-token expiry, so when demand
  exceeds the rate budget the token that ends first is refreshed first.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Iterator

__all__ = ["Schedule"]


class Schedule:
    __slots__ = ("_deadlines", "_ready", "_seq", "_when")

    def __init__(self) -> None:
        self._deadlines: list[tuple[float, str]] = []  # (when, human)
        self._when: dict[str, float] = {}  # human -> its live entry's when (that object)
        self._ready: list[tuple[float, int, str]] = []  # (access expiry, seq, human)
        self._seq = itertools.count()

    # --- deadlines ----------------------------------------------------------------------

    def place(self, human_id: str, when: float) -> bool:
        """Put the grant's one entry at ``when``; True if it is now the earliest. A grant
        placed again at the instant its entry holds keeps that entry (replanning every
        grant adds no entry for those whose deadline stayed)."""
        if self._when.get(human_id) == when:
            return False  # the loop knows of that entry already
        when = self._when[human_id] = float(when)
        heapq.heappush(self._deadlines, (when, human_id))
        return when <= self._deadlines[0][0]

    def place_all(self, entries: Iterable[tuple[str, float]]) -> None:
        """:meth:`place` for many grants at once, in O(n) (at start: every grant)."""
        live = self._when
        for human_id, when in entries:
            live[human_id] = when = float(when)
            self._deadlines.append((when, human_id))
        heapq.heapify(self._deadlines)

    def drop(self, human_id: str) -> None:
        """Forget the grant's entry (it surfaces later as stale and is skipped)."""
        self._when.pop(human_id, None)

    @property
    def entries(self) -> int:
        """Deadline entries held, stale ones included (each surfaces once, at its time)."""
        return len(self._deadlines)

    def next_deadline(self) -> float | None:
        return self._deadlines[0][0] if self._deadlines else None

    def pop_due(self, now: float) -> Iterator[str]:
        """Every grant whose entry is due at ``now``, earliest first (each entry once)."""
        deadlines, live = self._deadlines, self._when
        while deadlines and deadlines[0][0] <= now:
            when, human_id = heapq.heappop(deadlines)
            if live.get(human_id) is when:
                del live[human_id]
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
