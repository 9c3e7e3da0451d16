"""Refreshes on demand: who may spend the plan's budget outside the schedule. No I/O.

The schedule keeps every live grant fresh on its own; a request can still ask for more
than the token in hand (a ``min_ttl`` it cannot meet, an admin's ``POST …/refresh``, a
dormant grant woken up). Each such refresh spends the plan's rate budget, which the
schedule needs. So a refresh asked for on demand is admitted only when

1. **it can be met at all** — a ``min_ttl`` above the lifetime the server grants (as last
   observed) is refused at once, costing nothing (:func:`impossible_min_ttl`);
2. **the grant's cooldown is over** — at most one on-demand refresh per grant per
   ``cooldown`` seconds;
3. **the on-demand share has room** — on-demand refreshes in any 60-second window stay
   within ``share`` of the budget's capacity, so the schedule always keeps the rest;
4. **the peer's part of that share has room** — one peer (uid) may use at most
   :data:`PEER_PART` of the share, so one app's demand cannot take another's.

A refresh already due on the schedule, or already in flight, costs the share nothing:
answering it early spends no extra request. :class:`OnDemand` keeps the windows (send
instants on a monotonic clock, passed in by the caller) and a tally of refusals per peer
for health and metrics.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass
from enum import StrEnum
from typing import Final

__all__ = [
    "DEFAULT_WAIT",
    "MAX_WAIT",
    "PEER_PART",
    "WINDOW",
    "OnDemand",
    "Refusal",
    "RefusalReason",
    "impossible_min_ttl",
    "on_demand_cap",
    "peer_cap",
]

#: how long a request waits for a refresh unless it says (the ``wait`` parameter)
DEFAULT_WAIT: Final = 5.0
#: the longest anyone waits for a refresh on the socket
MAX_WAIT: Final = 30.0
#: the window the share is counted over, as the plan's budget is
WINDOW: Final = 60.0
#: the part of the on-demand share one peer may use
PEER_PART: Final = 0.5
#: a refused peer keeps health degraded this long after its last refusal
DEGRADED_FOR: Final = WINDOW
#: peers remembered for health (the oldest are forgotten first)
_MAX_PEERS: Final = 256


class RefusalReason(StrEnum):
    """Why an on-demand refresh was refused (the metric's label)."""

    IMPOSSIBLE = "impossible_min_ttl"
    COOLDOWN = "cooldown"
    SHARE = "share"
    PEER_SHARE = "peer_share"


@dataclass(frozen=True, slots=True)
class Refusal:
    reason: RefusalReason
    message: str
    #: seconds until asking again can succeed
    retry_after: float


def impossible_min_ttl(min_ttl: float, lifetime: float | None, serve_margin: float) -> bool:
    """Can no token from this server have ``min_ttl`` seconds left when served?

    ``lifetime`` is the access-token lifetime the server last granted (None: not known
    yet, so nothing is ruled out). A token is served with more than ``min_ttl +
    serve_margin`` seconds left, and a fresh one has at most ``lifetime``.
    """
    return lifetime is not None and min_ttl + serve_margin >= lifetime


def on_demand_cap(capacity: int, share: float) -> int:
    """On-demand refreshes allowed in any window: ``share`` of the budget, at least one."""
    return max(1, math.floor(capacity * share))


def peer_cap(cap: int) -> int:
    """The part of ``cap`` one peer may use: :data:`PEER_PART` of it, at least one."""
    return max(1, math.floor(cap * PEER_PART))


class _Window:
    """Instants of the last :data:`WINDOW` seconds, oldest first."""

    __slots__ = ("_at",)

    def __init__(self) -> None:
        self._at: deque[float] = deque()

    def count(self, now: float) -> int:
        at = self._at
        while at and at[0] + WINDOW <= now:
            at.popleft()
        return len(at)

    def free_at(self, cap: int, now: float) -> float:
        """When the window next holds fewer than ``cap`` instants (``now`` if it does)."""
        excess = self.count(now) - cap
        return now if excess < 0 else self._at[excess] + WINDOW

    def add(self, now: float) -> None:
        self._at.append(now)


class _PeerRefusals:
    """One peer's refusals: the last, the current run, and a per-minute rate kept in two
    one-minute buckets (the sliding-window estimate: the previous bucket weighted by how
    much of it still lies in the last minute, plus the current one)."""

    __slots__ = ("bucket", "bucket_start", "last_at", "previous", "reason", "run")

    def __init__(self, now: float) -> None:
        self.last_at = now
        self.reason = RefusalReason.COOLDOWN
        self.run = 0
        self.bucket_start = now
        self.bucket = self.previous = 0

    def add(self, now: float, reason: RefusalReason) -> None:
        self.run = self.run + 1 if now - self.last_at < DEGRADED_FOR else 1
        self.last_at, self.reason = now, reason
        self._roll(now)
        self.bucket += 1

    def per_minute(self, now: float) -> int:
        self._roll(now)
        weight = 1.0 - (now - self.bucket_start) / WINDOW
        return round(self.previous * weight + self.bucket)

    def _roll(self, now: float) -> None:
        passed = int((now - self.bucket_start) // WINDOW)
        if passed >= 1:
            self.previous = self.bucket if passed == 1 else 0
            self.bucket = 0
            self.bucket_start += passed * WINDOW


def _cooling(now: float, last: float, cooldown: float) -> Refusal:
    return Refusal(
        RefusalReason.COOLDOWN,
        f"this human's token was refreshed {now - last:.0f}s ago (on demand, or by another"
        f" instance); at most one on-demand refresh per {cooldown:g}s per human",
        last + cooldown - now,
    )


class OnDemand:
    """The on-demand windows, per-grant cooldowns and refusals (monotonic seconds in)."""

    __slots__ = ("_last", "_peers", "_refused", "_total", "refused")

    def __init__(self) -> None:
        self._total = _Window()
        self._peers: dict[int | None, _Window] = {}
        #: human -> monotonic instant of its last on-demand refresh
        self._last: dict[str, float] = {}
        #: peer -> its refusals (for health and log lines)
        self._refused: dict[int | None, _PeerRefusals] = {}
        #: refusals by reason, for /metrics
        self.refused: Counter[RefusalReason] = Counter()

    def admit(
        self,
        human_id: str,
        peer: int | None,
        now: float,
        *,
        capacity: int,
        share: float,
        cooldown: float,
    ) -> Refusal | None:
        """None, and the refresh counted, if it may go now; else why not (also counted)."""
        last = self._last.get(human_id)
        if last is not None and now < last + cooldown:
            return self.refuse(peer, now, _cooling(now, last, cooldown))
        cap = on_demand_cap(capacity, share)
        free = self._total.free_at(cap, now)
        if free > now:
            return self.refuse(
                peer,
                now,
                Refusal(
                    RefusalReason.SHARE,
                    f"on-demand refreshes are at their share of the rate budget ({cap} per "
                    f"{WINDOW:g}s); the schedule keeps the rest",
                    free - now,
                ),
            )
        window = self._peers.get(peer)
        mine = peer_cap(cap)
        if window is not None:
            free = window.free_at(mine, now)
            if free > now:
                return self.refuse(
                    peer,
                    now,
                    Refusal(
                        RefusalReason.PEER_SHARE,
                        f"this peer used its part of the on-demand share ({mine} per "
                        f"{WINDOW:g}s); other apps keep theirs",
                        free - now,
                    ),
                )
        else:
            if len(self._peers) >= _MAX_PEERS:
                self._forget_idle_peers(now)
            window = self._peers[peer] = _Window()
        window.add(now)
        self._total.add(now)
        self._last[human_id] = now
        return None

    def refreshed_elsewhere(self, human_id: str, now: float) -> None:
        """Another instance of a cluster refreshed ``human_id``'s grant: its cooldown runs
        from now here too, so that the cooldown holds for the cluster."""
        self._last[human_id] = max(now, self._last.get(human_id, now))

    def refuse(self, peer: int | None, now: float, refusal: Refusal) -> Refusal:
        """Count ``refusal`` against ``peer`` (also for refusals decided elsewhere)."""
        self.refused[refusal.reason] += 1
        record = self._refused.get(peer)
        if record is None:
            if len(self._refused) >= _MAX_PEERS:
                oldest = min(self._refused, key=lambda p: self._refused[p].last_at)
                del self._refused[oldest]
            record = self._refused[peer] = _PeerRefusals(now)
        record.add(now, refusal.reason)
        return refusal

    def refusals_of(self, peer: int | None, now: float) -> int:
        """Refusals of ``peer`` in its current run: since the first one that followed a
        quiet :data:`DEGRADED_FOR` (0 when it has been quiet that long). For log lines."""
        record = self._refused.get(peer)
        return 0 if record is None or now - record.last_at >= DEGRADED_FOR else record.run

    def refused_peers(self, now: float) -> list[tuple[int | None, RefusalReason, int]]:
        """Peers refused within the last :data:`DEGRADED_FOR` seconds: (peer, last reason,
        refusals in about the last minute), most refused first."""
        recent = [
            (peer, record.reason, record.per_minute(now))
            for peer, record in self._refused.items()
            if now - record.last_at < DEGRADED_FOR
        ]
        return sorted(recent, key=lambda r: -r[2])

    def forget(self, human_id: str) -> None:
        self._last.pop(human_id, None)

    def _forget_idle_peers(self, now: float) -> None:
        for peer in [p for p, w in self._peers.items() if w.count(now) == 0]:
            del self._peers[peer]
        if len(self._peers) >= _MAX_PEERS:  # all busy: drop the one with the oldest use
            del self._peers[next(iter(self._peers))]
